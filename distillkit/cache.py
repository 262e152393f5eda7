"""Compatibility for the older import path (tests, bench storage/decouple): the caching run lives in
distillkit.features (pipeline, inputs) and its finishing step in distillkit.store.finalize."""

from distillkit.features.inputs import decode_sample
from distillkit.features.pipeline import load_teachers, run_cache
from distillkit.store.finalize import finalize_store

__all__ = ["decode_sample", "finalize_store", "load_teachers", "run_cache"]
