"""The contract of every distillkit store (versioned). Imports no torch and no Prefect."""

from .v1 import (
    MANIFEST_ATTR,
    PROVENANCE_ATTR,
    SCHEMA_VERSION,
    VIEW_PARAMS,
    ArraySpec,
    Manifest,
    TeacherProvenance,
    expected_arrays,
)
from .validate import Problem, read_manifest, read_provenance, validate_structure
from .scenes import (  # scene stores (DUSt3R pairs + aligned pointmaps)
    SCENES_SCHEMA_VERSION, NetworkProvenance, SceneAlignment, SceneInfo, SceneManifest, expected_scene_arrays,
    is_scene_store, validate_scene_structure,
)

__all__ = [
    "MANIFEST_ATTR", "PROVENANCE_ATTR", "SCHEMA_VERSION", "VIEW_PARAMS", "ArraySpec", "Manifest", "Problem",
    "TeacherProvenance", "expected_arrays", "read_manifest", "read_provenance", "validate_structure",
    "SCENES_SCHEMA_VERSION", "NetworkProvenance", "SceneAlignment", "SceneInfo", "SceneManifest",
    "expected_scene_arrays", "is_scene_store", "validate_scene_structure",
]
