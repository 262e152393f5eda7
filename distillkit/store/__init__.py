"""Zarr v3 stores: layout (create/open), shard writer, statistics, streaming reader."""

from distillkit.store.layout import StoreMismatch, check_compatible, create_store, open_group, try_open

__all__ = ["StoreMismatch", "check_compatible", "create_store", "open_group", "try_open"]
