"""The registry of training tasks (torchtitan's TrainSpec): all that `distillkit train`, the `train-student` flow
and the checkpoint module know of a task comes from its entry here.

A task is its package under ``distillkit/training/`` plus one line in `TASKS`. The line names the task's config
model, the `distillkit train` options only it takes, how messages name its checkpoints, and its ``task`` module,
which provides (see `TaskModule`) the options as config overrides, the runner, the report of a finished run and
the loader that rebuilds a trained student from its checkpoint. Importing this module loads neither torch nor the
task modules: a config error comes back at once, and `distillkit.training.checkpoint` can look kinds up here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

from pydantic import BaseModel

from distillkit.config.common import merged_config_data, validate_config
from distillkit.training.dune.config import TrainConfig
from distillkit.training.pointmap.config import PointmapJobConfig

OnStep = Callable[[int, int, dict], None]  # (step, total steps, the step's metrics record)
# Runs one unit of a task's work (one student) and returns its result: unit(name, train) calls train(on_step). The
# CLI gives each unit a progress bar, the train-student flow makes each a Prefect task.
Unit = Callable[[str, Callable[[Optional[OnStep]], dict]], dict]


def in_process(name: str, train: Callable[[Optional[OnStep]], dict]) -> dict:
    """The plain `Unit`: run it here, without progress reports."""
    return train(None)


@dataclass
class Report:
    """What a finished run shows: `distillkit train` prints it, the train-student flow publishes it as a table
    artifact (`table_key`: every column of `rows`) and a markdown artifact (`result_key`: headline and files)."""

    headline: str
    title: str  # what the table holds
    rows: list[dict[str, Any]]  # one per teacher, per scene, ...
    columns: tuple[str, ...]  # the ones the CLI prints
    files: dict[str, str]  # label -> path
    table_key: str
    result_key: str


class TaskModule(Protocol):
    """What a task's ``task`` module provides (importing it must not load torch: it runs before the config is
    checked)."""

    def overrides(self, stores: list[str], given: dict[str, Any], common: dict[str, Any]) -> dict[str, Any]:
        """`distillkit train`'s ``--store`` values and the task's own options (`given`, None = not given) as config
        overrides; `common` holds the options every task takes (a task may fill those left None)."""

    def run(self, cfg: Any, unit: Unit) -> dict:
        """Train (or resume) as `cfg` says, each student through `unit`; the result the flow returns."""

    def report(self, cfg: Any, result: dict) -> Report: ...

    def load_student(self, checkpoint: str | Path, device: Any) -> Any:
        """The trained student (a torch module in eval mode on `device`) from a checkpoint of this task."""


@dataclass(frozen=True)
class Task:
    name: str  # also the kind its checkpoints are marked with
    summary: str
    config: type[BaseModel]
    options: tuple[str, ...]  # `distillkit train` options (parameter names) that belong to this task alone
    checkpoint_kind: str  # how messages name its checkpoints
    module: str  # its `TaskModule`, imported when first used
    legacy_keys: tuple[str, ...] = field(default=())  # keys only its checkpoints from before the format marker hold

    def plugs(self) -> TaskModule:
        return importlib.import_module(self.module)  # type: ignore[return-value]

    def overrides(self, stores: list[str], given: dict[str, Any], common: dict[str, Any]) -> dict[str, Any]:
        return self.plugs().overrides(stores, given, common)

    def run(self, cfg: BaseModel, unit: Unit = in_process) -> dict:
        return self.plugs().run(cfg, unit)

    def report(self, cfg: BaseModel, result: dict) -> Report:
        return self.plugs().report(cfg, result)

    def load_student(self, checkpoint: str | Path, device: Any = "cpu") -> Any:
        return self.plugs().load_student(checkpoint, device)


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("dune", "multi-teacher feature distillation from feature stores (DUNE)", TrainConfig,
         ("teacher", "preset", "depth", "embed_dim", "heads", "projector", "num_workers"), "DUNE-student",
         "distillkit.training.dune.task", ("model", "teacher_dims", "data_spec")),
    Task("pointmap", "one scene-specific pointmap student per scene of a scene store", PointmapJobConfig,
         ("student", "scene", "image_size", "max_minutes"), "pointmap-student",
         "distillkit.training.pointmap.task", ("model", "spec", "config")),
)}
DEFAULT_TASK = "dune"


def get_task(name: str | None, path: str | Path | None = None) -> Task:
    """The task called `name` (None: the default); an unknown name fails naming the config file."""
    name = name or DEFAULT_TASK
    if name not in TASKS:
        where = f"config file {path}" if path else "config"
        raise ValueError(f"{where}: task: unknown training task {name!r} (choose from {', '.join(TASKS)})")
    return TASKS[name]


def train_config_model(data: dict[str, Any], path: str | Path | None = None) -> type[BaseModel]:
    """The config model of the task that `data` names with ``task:`` (TrainConfig without one)."""
    return get_task(data.get("task"), path).config


def load_train_config(path: str | Path | None = None, **overrides: Any) -> BaseModel:
    """A training config from an optional YAML file plus overrides (None = not given); the task picks the model."""
    data = merged_config_data(path, overrides)
    return validate_config(train_config_model(data, path), data, path)

