# Two commands for a fresh machine: `make demo` and `make test`. Each creates .venv and installs what it needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120
export MALLOC_MMAP_THRESHOLD_ := 1073741824
export MALLOC_TRIM_THRESHOLD_ := 2147483648

.PHONY: install demo test test-fast deploy worker clean

$(STAMP): pyproject.toml setup.py
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test,demo]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m distillkit.demo demo_out

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not integration"

# Register the deployments of deploy/prefect.yaml against $$PREFECT_API_URL (creates the process pool `gpu` if missing).
deploy: $(STAMP)
	@test -n "$$PREFECT_API_URL" || { echo "set PREFECT_API_URL, e.g. http://127.0.0.1:4200/api"; exit 2; }
	$(BIN)/prefect work-pool inspect gpu >/dev/null 2>&1 || $(BIN)/prefect --no-prompt work-pool create gpu --type process
	DISTILL_ROOT=$(CURDIR) $(BIN)/prefect --no-prompt deploy --all --prefect-file deploy/prefect.yaml

worker: $(STAMP)
	DISTILL_ROOT=$(CURDIR) $(BIN)/prefect worker start --pool gpu

clean:
	rm -rf demo_out .pytest_cache
