"""Helpers shared by the flows: config resolution and artifacts."""

from __future__ import annotations

from typing import Callable, TypeVar

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
