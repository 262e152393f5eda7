"""The store kinds and how to tell them apart: a feature store (teacher features, schema v1) or a scene store
(DUSt3R pairs + aligned pointmaps). Both keep their manifest in the root attribute ``MANIFEST_ATTR``; its
``schema_version`` names the kind."""

from __future__ import annotations

from typing import Any, Callable

import zarr

from .arrays import Problem
from .scenes import SCENES_SCHEMA_VERSION, validate_scene_structure
from .v1 import MANIFEST_ATTR, SCHEMA_VERSION
from .validate import validate_feature_structure

FEATURES, SCENES = "features", "scenes"
SCHEMA_KINDS = {SCHEMA_VERSION: FEATURES, SCENES_SCHEMA_VERSION: SCENES}
STRUCTURE_CHECKS: dict[str, Callable[[zarr.Group], tuple[Any, dict, list[Problem]]]] = {
    FEATURES: validate_feature_structure, SCENES: validate_scene_structure}


def store_kind(group: zarr.Group) -> str:
    """``features`` or ``scenes``; a group without a manifest (or an unknown one) is read as a feature store, whose
    checks then name what is missing."""
    raw = group.attrs.get(MANIFEST_ATTR)
    return SCHEMA_KINDS.get(raw.get("schema_version") if isinstance(raw, dict) else None, FEATURES)


def validate_structure(group: zarr.Group) -> tuple[Any, dict, list[Problem]]:
    """(manifest, per-teacher provenance or per-scene info, problems) of either kind; reads no bulk data."""
    return STRUCTURE_CHECKS[store_kind(group)](group)
