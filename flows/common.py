"""Helpers shared by the flows: config resolution and artifacts."""

from __future__ import annotations

from typing import Callable, TypeVar

from pydantic import BaseModel

from distillkit.config import read_config_file, validate_config

M = TypeVar("M", bound=BaseModel)


def resolve_config(model: type[M] | Callable[[dict], type[M]], config: BaseModel | dict | None,
                   config_file: str | None, overrides: dict | None = None) -> M:
    """YAML file first, then the explicitly given config, then `overrides` (partial: a few fields) on top.
    `model` is a pydantic model or a function choosing one from the merged fields (e.g. by ``task``)."""
    if config is None and config_file is None:
        raise ValueError(f"give `config` ({getattr(model, '__name__', 'config')} fields) or `config_file` "
                         f"(a YAML path)")
    given = config.model_dump(exclude_unset=True) if isinstance(config, BaseModel) else dict(config or {})
    if isinstance(config, BaseModel) and "task" in type(config).model_fields:
        given["task"] = config.task  # a default that still decides the model
    given.update(overrides or {})
    data = read_config_file(config_file)
    data.update({k: v for k, v in given.items() if v is not None})
    chosen = model if isinstance(model, type) and issubclass(model, BaseModel) else model(data)
    return validate_config(chosen, data, config_file)  # type: ignore[return-value]
