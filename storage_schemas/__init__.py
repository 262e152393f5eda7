"""The contract of every distillkit store (versioned). Imports no torch and no Prefect."""

from . import paths  # noqa: F401  (every teacher array path, spelled once)

from .v1 import (
    CREATING_ATTR,
    MANIFEST_ATTR,
    PROVENANCE_ATTR,
    SCHEMA_VERSION,
    VIEW_PARAMS,
    ArraySpec,
    Manifest,
    TeacherProvenance,
    expected_arrays,
)
from .arrays import Problem, check_array
from .validate import read_manifest, read_provenance, validate_feature_structure
from .kinds import FEATURES, SCENES, SCHEMA_KINDS, store_kind, validate_structure
from .scenes import (  # scene stores (DUSt3R pairs + aligned pointmaps)
    SCENES_SCHEMA_VERSION, NetworkProvenance, SceneAlignment, SceneInfo, SceneManifest, expected_scene_arrays,
    validate_scene_structure,
)

__all__ = [
    "MANIFEST_ATTR", "PROVENANCE_ATTR", "SCHEMA_VERSION", "VIEW_PARAMS", "ArraySpec", "Manifest", "Problem",
    "TeacherProvenance", "check_array", "expected_arrays", "read_manifest", "read_provenance", "validate_structure",
    "validate_feature_structure", "FEATURES", "SCENES", "SCHEMA_KINDS", "store_kind", "CREATING_ATTR",
    "SCENES_SCHEMA_VERSION", "NetworkProvenance", "SceneAlignment", "SceneInfo", "SceneManifest",
    "expected_scene_arrays", "validate_scene_structure",
]
