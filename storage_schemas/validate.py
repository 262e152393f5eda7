"""Structural validation of a store against schema v1 (zarr + pydantic only, reads no bulk data)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import zarr
from .attrs import read_attr_model, read_node_attr_model
from .v1 import MANIFEST_ATTR, PROVENANCE_ATTR, ArraySpec, Manifest, TeacherProvenance, expected_arrays


@dataclass(frozen=True)
class Problem:
    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


def read_manifest(group: zarr.Group) -> Manifest:
    """The store's manifest; raises ValueError naming what is wrong."""
    return read_attr_model(group.attrs, MANIFEST_ATTR, Manifest, missing_hint=": not a distillkit store")


def read_provenance(group: zarr.Group, teacher: str) -> TeacherProvenance:
    return read_node_attr_model(group, f"teachers/{teacher}", PROVENANCE_ATTR, TeacherProvenance)


def _dtype_name(arr: zarr.Array) -> str:
    dt = arr.dtype
    if dt.kind in ("U", "T", "O"):
        return "str"
    return np.dtype(dt).name


def check_array(group: zarr.Group, spec: ArraySpec) -> list[Problem]:
    try:
        arr = group[spec.path]
    except KeyError:
        return [Problem(spec.path, "array is missing")]
    if not isinstance(arr, zarr.Array):
        return [Problem(spec.path, "expected an array, found a group")]
    out = []
    if tuple(arr.shape) != spec.shape:
        out.append(Problem(spec.path, f"shape {tuple(arr.shape)} != expected {spec.shape}"))
    if _dtype_name(arr) != spec.dtype:
        out.append(Problem(spec.path, f"dtype {_dtype_name(arr)} != expected {spec.dtype}"))
    dims = tuple(arr.metadata.dimension_names or ())
    if dims != spec.dims:
        out.append(Problem(spec.path, f"dimension_names {dims} != expected {spec.dims}"))
    if spec.shape and tuple(arr.chunks) != spec.chunks:
        out.append(Problem(spec.path, f"chunks {tuple(arr.chunks)} != expected {spec.chunks}"))
    shards = tuple(arr.shards) if arr.shards else None
    if spec.shape and shards != spec.shards:
        out.append(Problem(spec.path, f"shards {shards} != expected {spec.shards}"))
    return out


def validate_structure(group: zarr.Group) -> tuple[Manifest | None, dict[str, TeacherProvenance], list[Problem]]:
    """Check manifest, provenance and every array's metadata. Returns (manifest, provenances, problems)."""
    # --- scene stores (distillkit_schemas.scenes): (SceneManifest, {scene: SceneInfo}, problems)
    from .scenes import is_scene_store, validate_scene_structure

    if is_scene_store(group):
        return validate_scene_structure(group)  # type: ignore[return-value]
    # --- end scene stores
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
            problems.append(Problem(f"teachers/{t}", str(e)))
    if problems:
        return manifest, provs, problems
    for spec in expected_arrays(manifest, provs):
        problems += check_array(group, spec)
    return manifest, provs, problems
