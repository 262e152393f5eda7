"""Helpers shared by the flows: config resolution, and the pull step that finds the checkout on a worker."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, NoReturn, TypeVar

from pydantic import BaseModel

from distillkit.config.common import merged_config_data, validate_config

M = TypeVar("M", bound=BaseModel)


def resolve_config(model: type[M] | Callable[..., type[M]], config: BaseModel | dict | None,
                   config_file: str | None, overrides: dict | None = None) -> M:
    """YAML file first, then the explicitly given config, then `overrides` (partial: a few fields) on top.
    `model` is a pydantic model or a function choosing one from the merged fields (e.g. by ``task``).
    A config object on top of a file contributes the fields set on it; without a file, all of it (so changes made
    to its nested models after construction count too)."""
    if config is None and config_file is None:
        raise ValueError(f"give `config` ({getattr(model, '__name__', 'config')} fields) or `config_file` "
                         f"(a YAML path)")
    if isinstance(config, BaseModel):
        given = config.model_dump(exclude_unset=config_file is not None)
        if "task" in type(config).model_fields:
            given["task"] = config.task  # a default that still decides the model
    else:
        given = dict(config or {})
    data = merged_config_data(config_file, {**given, **(overrides or {})})
    chosen = model if isinstance(model, type) and issubclass(model, BaseModel) else model(data, config_file)
    return validate_config(chosen, data, config_file)  # type: ignore[return-value]


ROOT_ENV = "DISTILL_ROOT"
_MARKER = "flows/cache_teachers.py"  # deploy/prefect.yaml's entrypoints and config files are relative to the checkout


def _is_checkout(folder: str | Path | None) -> bool:
    return bool(folder) and (Path(folder) / _MARKER).is_file()


def enter_checkout(deployed_from: str = "") -> dict[str, str]:
    """Prefect pull step (deploy/prefect.yaml): the checkout a flow run works in, so that the entrypoints
    (`flows/*.py`) and `config_file` paths resolve. `DISTILL_ROOT` on the worker wins; else the checkout that
    `prefect deploy` ran in, if this machine has it; else the checkout this package is installed from
    (`pip install -e .`). None of them: the run fails with one line that says what to set."""
    given = os.environ.get(ROOT_ENV, "").strip()
    if given:
        if not _is_checkout(given):
            _fail_run(f"{ROOT_ENV}={given} on this worker is not a distillkit checkout (no {_MARKER} there): set "
                      f"{ROOT_ENV} to the repository root")
        return {"directory": str(Path(given).resolve())}
    installed = Path(__file__).resolve().parents[1]
    for folder in (deployed_from, installed):
        if _is_checkout(folder):
            return {"directory": str(Path(folder).resolve())}
    _fail_run(f"no distillkit checkout on this worker (deployed from {deployed_from or '?'}, not here; package "
              f"installed at {installed}, not a checkout): set {ROOT_ENV} to the repository root in the worker's "
              f"environment")


def _fail_run(message: str) -> NoReturn:
    """Raise; first put the reason on the flow run (log line and Failed state message), because Prefect 3.8 prints
    a pull step's exception only on the worker's stdout and reports the run as 'Crashed: exit code 1'."""
    run_id = os.environ.get("PREFECT__FLOW_RUN_ID")
    if run_id:
        try:
            import logging

            from prefect import get_client
            from prefect.states import Failed

            logging.getLogger("prefect.flow_runs").error(message, extra={"flow_run_id": run_id})
            with get_client(sync_client=True) as client:
                client.set_flow_run_state(run_id, Failed(message=message))
        except Exception:  # reporting is best effort; the exception below is the failure
            pass
    raise FileNotFoundError(message)
