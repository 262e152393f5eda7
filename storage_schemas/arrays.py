"""Checks shared by every store kind: a `Problem` found, and an array's metadata against its `ArraySpec`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import zarr

from .v1 import ArraySpec


@dataclass(frozen=True)
class Problem:
    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


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
