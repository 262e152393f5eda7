"""Zarr v3 stores: layout (create/open), shard writer, statistics, streaming reader."""

from distillkit.store.target import NotAStore
from distillkit.store.layout import StoreMismatch, check_compatible, create_store, open_group

__all__ = ["NotAStore", "StoreMismatch", "check_compatible", "create_store", "open_group"]
