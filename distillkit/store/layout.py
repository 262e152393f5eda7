"""Create and open stores: every array's metadata is created once, serially, before any shard is written."""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from distillkit_schemas import (
    CREATING_ATTR, FEATURES, MANIFEST_ATTR, PROVENANCE_ATTR, VIEW_PARAMS, Manifest, TeacherProvenance, expected_arrays,
    paths,
)
from distillkit_schemas.validate import read_manifest, read_provenance

from distillkit.store.ids import str_column
from distillkit.store.metadata import raise_if_damaged, zarr_store
from distillkit.store.target import NotAStore, inspect_target

log = logging.getLogger("distillkit")


class StoreMismatch(ValueError):
    """Reopening a store with a different configuration than it was created with."""


def is_url(path: str) -> bool:
    return "://" in path


def open_group(url: str, mode: str = "r", storage_options: dict[str, Any] | None = None,
               consolidated: bool | None = None, name_damage: bool = True) -> zarr.Group:
    """Open a Zarr v3 group on a local path or an fsspec URL (`consolidated=False`: the live metadata).

    Writers always see the live metadata: a consolidated snapshot is stale once an array has grown. A store whose
    metadata does not parse raises DamagedMetadata naming the file (`name_damage`), not zarr's bare JSON error."""
    try:
        return _open_group(url, mode, storage_options, consolidated)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        raise
    except Exception as e:
        if name_damage:
            raise_if_damaged(url, storage_options, e)
        raise


def _open_group(url: str, mode: str, storage_options: dict[str, Any] | None, consolidated: bool | None
                ) -> zarr.Group:
    kwargs: dict[str, Any] = {"zarr_format": 3}
    if mode == "r" or consolidated is not None:
        kwargs["use_consolidated"] = consolidated
    if mode not in ("r", "w"):
        kwargs["use_consolidated"] = False
    return zarr.open_group(store=zarr_store(url, storage_options, read_only=mode == "r"), mode=mode, **kwargs)


def begin_creation(group: zarr.Group, kind: str) -> None:
    """Mark a new store of `kind` as being created: until `finish_creation`, it is not usable (and a later run may
    create it again, but only a run that writes this kind: see `store/target.py`)."""
    group.attrs[CREATING_ATTR] = kind


def finish_creation(group: zarr.Group, manifest: dict[str, Any]) -> None:
    """Write the manifest last, in one attribute update with the end of the creation mark."""
    group.attrs.update({MANIFEST_ATTR: manifest, CREATING_ATTR: False})


def creation_interrupted(group: zarr.Group) -> bool:
    """Creation began and never finished (killed): the store may be created again from scratch."""
    return bool(group.attrs.get(CREATING_ATTR, False))  # the kind, or True in stores from before it was recorded


def create_group(url: str, kind: str, storage_options: dict[str, Any] | None = None) -> zarr.Group:
    """An empty group to create a store of `kind` in: only where nothing is, or where the creation of a store of
    this kind was interrupted (zarr's mode "w" deletes what is under the path). Anything else raises NotAStore."""
    state = inspect_target(url, kind, storage_options)
    if state == "existing":
        raise NotAStore(f"{url} is already a complete {kind} store; refusing to create it again")
    group = open_group(url, "w", storage_options)
    begin_creation(group, kind)
    return group


def is_created(group: zarr.Group) -> bool:
    """The store was created completely (a crash during creation leaves the mark set or no manifest)."""
    return group.attrs.get(MANIFEST_ATTR) is not None and not group.attrs.get(CREATING_ATTR, False)


def _compressors(codec: str, dtype: str) -> list:
    """The bytes-to-bytes codecs of a bulk array, always ending in a crc32c checksum (zarr verifies it on read;
    sharded arrays also checksum their shard index, zarr's default)."""
    checksum = [Crc32cCodec()]
    if codec == "none":
        return checksum
    if codec == "zstd":
        return [ZstdCodec(level=1)] + checksum
    return [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=np.dtype(dtype).itemsize)] + checksum


def create_store(url: str, manifest: Manifest, provenances: dict[str, TeacherProvenance], ids: Sequence[str],
                 uris: Sequence[str], splits: np.ndarray, codec: str = "none",
                 storage_options: dict[str, Any] | None = None, view_seeds: np.ndarray | None = None,
                 codec_arrays: dict[str, np.ndarray] | None = None, signatures: Sequence[str] | None = None
                 ) -> zarr.Group:
    """Create all arrays and write the sample table. The manifest is written last: it marks a usable store."""
    group = create_group(url, FEATURES, storage_options)
    for spec in expected_arrays(manifest, provenances):
        # bulk arrays read by the trainer follow --codec (default none: the loader then reads at memory speed)
        is_feature = spec.path == "samples/image" or (
            spec.path.startswith("teachers/") and spec.path.rsplit("/", 1)[-1] in ("patch", "cls"))
        if spec.dtype == "str":
            fill, compressors = "", [Crc32cCodec()]
        elif spec.dtype.startswith("float"):
            fill = np.nan  # unwritten samples read back as NaN: missing data is detectable without listing
            compressors = _compressors(codec, spec.dtype) if is_feature else [ZstdCodec(level=1), Crc32cCodec()]
        else:
            fill, compressors = 0, _compressors(codec if is_feature else "none", spec.dtype)
        arr = group.create_array(
            spec.path, shape=spec.shape, dtype=str if spec.dtype == "str" else spec.dtype,
            chunks=spec.chunks, shards=spec.shards, fill_value=fill,
            compressors=compressors, dimension_names=spec.dims if spec.shape else None,
            config={"write_empty_chunks": True},
        )
        if spec.path == "samples/view":
            arr.attrs["columns"] = list(VIEW_PARAMS)
    for name, prov in provenances.items():
        group[paths.teacher(name)].attrs[PROVENANCE_ATTR] = prov.model_dump(mode="json")
    group["samples/id"][:] = str_column(ids)
    group["samples/uri"][:] = str_column(uris)
    group["samples/split"][:] = splits.astype(np.uint8)
    group["samples/view_seed"][:] = np.zeros(len(ids), np.int64) if view_seeds is None else view_seeds
    if manifest.signatures:
        group["samples/signature"][:] = str_column([""] * len(ids) if signatures is None else signatures)
    for path, value in (codec_arrays or {}).items():  # compact storage: basis / scale / offset
        group[path][...] = value
    finish_creation(group, manifest.model_dump(mode="json"))
    return group


def check_compatible(group: zarr.Group, want: Manifest, provenances: dict[str, TeacherProvenance],
                     url: str) -> Manifest:
    """Refuse to mix: the existing store must have the same sample table, layout and teacher provenance."""
    have = read_manifest(group)
    problems = []
    # the sample table may grow (see store/growth.py); how samples become rows and targets may not change
    for field in ("shard_size", "image_hw", "student_patch", "val_fraction", "views", "view_mode"):
        a, b = getattr(have, field), getattr(want, field)
        if a != b:
            problems.append(f"{field}: store has {a!r}, this run has {b!r}")
    if sorted(have.teachers) != sorted(want.teachers):
        problems.append(f"teachers: store has {have.teachers}, this run has {want.teachers}")
    else:
        for name, prov in provenances.items():
            stored = read_provenance(group, name).identity()
            for key, value in prov.identity().items():
                if stored[key] != value:
                    problems.append(f"teacher {name}.{key}: store has {stored[key]!r}, this run has {value!r}")
    if problems:
        raise StoreMismatch(
            f"store {url} was created with a different configuration; refusing to mix features:\n  - "
            + "\n  - ".join(problems) + "\nUse a new --store path (or delete this one) to cache with these settings.")
    return have
