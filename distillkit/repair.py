"""Compatibility: `cache --repair` lives in distillkit.features.repair."""

from distillkit.features.repair import repair_store

__all__ = ["repair_store"]
