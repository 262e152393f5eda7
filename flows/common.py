"""Helpers shared by the flows: config resolution and artifacts."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel

from distillkit.config import load_config

M = TypeVar("M", bound=BaseModel)


def resolve_config(model: type[M], config: M | dict | None, config_file: str | None,
                   overrides: dict | None = None) -> M:
    """YAML file first, then the explicitly given config, then `overrides` (partial: a few fields) on top."""
    if config is None and config_file is None:
        raise ValueError(f"give `config` ({model.__name__} fields) or `config_file` (a YAML path)")
    given = config.model_dump(exclude_unset=True) if isinstance(config, BaseModel) else dict(config or {})
    given.update(overrides or {})
    return load_config(model, config_file, **given)  # type: ignore[return-value]
