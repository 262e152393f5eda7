"""The registry of training tasks: each task's config model and the `distillkit train` options only it takes.

`distillkit train`, the `train-student` flow and YAML files choose a task with ``task:`` (default ``dune``). Adding a
task means adding its package under ``distillkit/training/`` and one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from distillkit.config.common import merged_config_data, validate_config
from distillkit.training.dune.config import TrainConfig
from distillkit.training.pointmap.config import PointmapJobConfig


@dataclass(frozen=True)
class Task:
    name: str
    summary: str
    config: type[BaseModel]
    options: tuple[str, ...]  # `distillkit train` options (parameter names) that belong to this task alone


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("dune", "multi-teacher feature distillation from feature stores (DUNE)", TrainConfig,
         ("teacher", "preset", "depth", "embed_dim", "heads", "projector", "num_workers")),
    Task("pointmap", "one scene-specific pointmap student per scene of a scene store", PointmapJobConfig,
         ("student", "scene", "image_size", "max_minutes")),
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
