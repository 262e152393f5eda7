"""Structural validation of a feature store against schema v1 (zarr + pydantic only, reads no bulk data)."""

from __future__ import annotations

import zarr

from . import paths
from .arrays import Problem, check_array
from .attrs import read_attr_model, read_node_attr_model
from .v1 import MANIFEST_ATTR, PROVENANCE_ATTR, Manifest, TeacherProvenance, expected_arrays, index_arrays


def read_manifest(group: zarr.Group) -> Manifest:
    """The store's manifest; raises ValueError naming what is wrong."""
    return read_attr_model(group.attrs, MANIFEST_ATTR, Manifest, missing_hint=": not a distillkit store")


def read_provenance(group: zarr.Group, teacher: str) -> TeacherProvenance:
    return read_node_attr_model(group, paths.teacher(teacher), PROVENANCE_ATTR, TeacherProvenance)


def validate_feature_structure(group: zarr.Group) -> tuple[Manifest | None, dict[str, TeacherProvenance],
                                                             list[Problem]]:
    """Check a feature store's manifest, provenance and every array's metadata: (manifest, provenances, problems)."""
    try:
        manifest = read_manifest(group)
    except ValueError as e:
        return None, {}, [Problem("/", str(e))]
    provs: dict[str, TeacherProvenance] = {}
    problems: list[Problem] = []
    for t in manifest.teachers:
        try:
            provs[t] = read_provenance(group, t)
        except ValueError as e:
            problems.append(Problem(paths.teacher(t), str(e)))
    if problems:
        return manifest, provs, problems
    for spec in expected_arrays(manifest, provs) + index_arrays(manifest):
        problems += check_array(group, spec)
    return manifest, provs, problems
