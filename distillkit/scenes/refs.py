"""Scenes by reference: small JSON-able specs that flows pass around instead of arrays (npz file, scene store,
synthetic room), each loaded once per process."""

from __future__ import annotations

import functools
import json

from distillkit.scenes.data import SceneData
from distillkit.scenes.synthetic import synthetic_scene


@functools.lru_cache(maxsize=4)
def _load_cached(spec_json: str) -> SceneData:
    spec = json.loads(spec_json)
    if "npz" in spec:
        return SceneData.load_npz(spec["npz"])
    if "store" in spec:
        return SceneData.from_store(spec["store"], spec["scene"], spec.get("storage_options"),
                                    spec.get("test_every", 8))
    if "synthetic" in spec:
        return synthetic_scene(**spec["synthetic"])
    raise ValueError(f"scene spec needs one of 'npz', 'store' (+ 'scene'), 'synthetic'; got {sorted(spec)}")


def load_scene(spec: dict) -> SceneData:
    """A scene from a small JSON-able reference (what flows pass around instead of arrays):
    ``{"npz": path}``, ``{"store": url, "scene": name, "storage_options": {...}}`` or ``{"synthetic": {kwargs of
    synthetic_scene}}``. Loaded once per process (LRU cache): the runs of an ablation read the same arrays.
    Treat the returned arrays as read-only."""
    return _load_cached(json.dumps(spec, sort_keys=True))
