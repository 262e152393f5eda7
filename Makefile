# Two commands for a fresh machine: `make demo` and `make test`. Each creates .venv and installs what it needs.
# .venv runs on the newest Python the machine has (3.13 or 3.12: the newest zarr 3.x needs >= 3.12); the oldest
# supported pair (Python 3.11 + zarr 3.1) runs the zarr-facing, torch-free tests again in .venv/zarr-oldest.
NEWEST_FIRST := python3.13 $$HOME/.pyenv/versions/3.13*/bin/python3 python3.12 $$HOME/.pyenv/versions/3.12*/bin/python3
PY ?= $(shell for p in $(NEWEST_FIRST) python3; do \
	$$p -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null && { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120
export MALLOC_MMAP_THRESHOLD_ := 1073741824
export MALLOC_TRIM_THRESHOLD_ := 2147483648

.PHONY: install demo test test-oldest-zarr test-fast deploy worker clean

# setuptools' note on editable installs ("folders ... with the same name as your package") does not apply: flows/
# and storage_schemas/ install as distillkit_flows and distillkit_schemas.
$(STAMP): pyproject.toml setup.py
	@echo "installing distillkit and its dependencies (torch, prefect, zarr, ...) into $(VENV) with $(PY):" \
	     "first run only, about 3 min"
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	PYTHONWARNINGS="ignore::UserWarning:setuptools.command.editable_wheel" $(BIN)/pip install -q -e ".[test,demo]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m distillkit_flows.demo demo_out

PY_OLDEST ?= $(shell for p in python3.11 $$HOME/.pyenv/versions/3.11*/bin/python3; do \
	$$p -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null && { echo $$p; break; }; done)
ZVENV := $(VENV)/zarr-oldest
ZSTAMP := $(ZVENV)/.installed
ZARR_TESTS := tests/test_direct_reader.py tests/test_interop.py

$(ZSTAMP): pyproject.toml Makefile
	$(PY_OLDEST) -m venv $(ZVENV)
	$(ZVENV)/bin/pip install -q --upgrade "zarr>=3.1,<3.2" numcodecs numpy fsspec pydantic pytest pytest-timeout tensorstore xarray "crc32c>=2.4"
	mkdir -p $(ZVENV)/src && ln -sfn $(CURDIR)/storage_schemas $(ZVENV)/src/distillkit_schemas
	printf '%s\n%s\n' $(CURDIR) $(CURDIR)/$(ZVENV)/src > "$$($(ZVENV)/bin/python -c 'import site; print(site.getsitepackages()[0])')/distillkit-src.pth"
	touch $(ZSTAMP)

test: $(STAMP)
	$(BIN)/python -c "import sys, zarr; print('suite: Python', sys.version.split()[0], '+ zarr', zarr.__version__)"
	$(BIN)/python -m pytest -q --durations=15
	@if [ -n "$(PY_OLDEST)" ]; then $(MAKE) --no-print-directory test-oldest-zarr; \
	else echo "note: no Python 3.11 here (set PY_OLDEST=<python>): the oldest-zarr run is skipped"; fi

test-oldest-zarr: $(ZSTAMP)
	$(ZVENV)/bin/python -c "import zarr; print('oldest supported pair: zarr', zarr.__version__)"
	$(ZVENV)/bin/python -m pytest -q --noconftest -p no:cacheprovider $(ZARR_TESTS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not integration"

# Register the deployments of deploy/prefect.yaml against $$PREFECT_API_URL (creates the process pool `gpu` if missing).
deploy: $(STAMP)
	@test -n "$$PREFECT_API_URL" || { echo "set PREFECT_API_URL, e.g. http://127.0.0.1:4200/api"; exit 2; }
	$(BIN)/prefect work-pool inspect gpu >/dev/null 2>&1 || $(BIN)/prefect --no-prompt work-pool create gpu --type process
	$(BIN)/prefect --no-prompt deploy --all --prefect-file deploy/prefect.yaml

# Ctrl-C stops the worker; a stop by signal is the normal end here, not an error.
worker: $(STAMP)
	DISTILL_ROOT=$(CURDIR) $(BIN)/prefect worker start --pool gpu || [ $$? -ge 128 ]

clean:
	rm -rf demo_out .pytest_cache
