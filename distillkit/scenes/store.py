"""Scene store I/O: create every array once (serially, before any scene task), write a scene's frames, pairs and
alignment, read pairs back for (re-)alignment. Layout and dtypes: ``storage_schemas/scenes.py``.

One task owns one scene: every array of ``scenes/<s>`` is written by that task only, so no two writers ever
share a chunk or shard. Pair outputs are buffered and written one whole storage shard at a time (a partial
shard write is a read-modify-write). Completion markers live in ``progress/{pairs_done,scene_done}``
(chunk 1 per scene) and are written after the data they vouch for.
"""

from __future__ import annotations

import logging
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from distillkit_schemas import SCENES, SceneAlignment, SceneInfo, SceneManifest
from distillkit_schemas.scenes import (
    ALIGNMENT_ATTR, SCENE_ATTR, expected_root_arrays, expected_scene_arrays, read_scene_info, read_scene_manifest,
)

from distillkit.store.layout import StoreMismatch, create_group, finish_creation, open_group
from distillkit.store.integrity import missing_objects
from distillkit.store.target import NotAStore, inspect_target

log = logging.getLogger("distillkit")

BLOSC_ARRAYS = ("pts3d", "conf", "depth", "gt_depth", "pts1", "pts2", "conf1", "conf2")  # notes/storage.md §3
PAIR_KEYS = ("pts1", "pts2", "conf1", "conf2")
# what must match when a store is reopened: anything else would mix outputs of different runs
IDENTITY_FIELDS = ("source_fingerprint", "scenes", "image_size", "graph", "symmetrize", "frames_per_shard")
NETWORK_IDENTITY = ("predictor", "arch", "config", "checkpoint_sha256", "dtype")


def open_store(url: str, mode: str = "r", storage_options: dict[str, Any] | None = None) -> zarr.Group:
    """Readers use the consolidated snapshot when there is one (all metadata in one request on S3); writers see the
    live metadata and first remove the snapshot, which would go stale with their first attribute change
    (re-alignment): until they consolidate again (finalize, align), readers see the live metadata."""
    if mode == "r":
        return open_group(url, "r", storage_options)
    if mode == "w":
        return create_group(url, SCENES, storage_options)
    if inspect_target(url, SCENES, storage_options) != "existing":  # refuses any other kind before writing a byte
        raise NotAStore(f"{url} is not a complete scene store (run `distillkit cache-scenes` into it first)")
    group = open_group(url, mode, storage_options, consolidated=False)
    if open_group(url, "r", storage_options).metadata.consolidated_metadata is not None:
        # rewriting the root attributes through a live-metadata handle writes zarr.json without the snapshot
        group.attrs.put(group.attrs.asdict())
    return group


def consolidate(group: zarr.Group) -> None:
    with warnings.catch_warnings():  # consolidated metadata is a zarr-python extension of v3
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(group.store)


@dataclass
class SceneTables:
    """What is written into a scene group at creation."""

    info: SceneInfo
    frame_ids: list[str]
    uris: list[str]
    splits: np.ndarray  # [n] uint8
    edges: np.ndarray  # [E, 2]
    gt_cam2world: np.ndarray | None = None  # [n, 4, 4]
    gt_intrinsics: np.ndarray | None = None  # [n, 3, 3]


def _create(group: zarr.Group, spec) -> zarr.Array:
    name = spec.path.rsplit("/", 1)[-1]
    if spec.dtype == "str":
        fill, comp = "", None
    elif spec.dtype == "bool":
        fill, comp = False, ZstdCodec(level=1)
    elif spec.dtype.startswith("float"):
        fill = np.nan  # unwritten data reads back as NaN
        comp = (BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle", typesize=np.dtype(spec.dtype).itemsize)
                if name in BLOSC_ARRAYS else ZstdCodec(level=1))
    else:
        fill, comp = 0, ZstdCodec(level=1) if spec.dtype == "uint8" and len(spec.shape) > 1 else None
    compressors = ([comp] if comp is not None else []) + [Crc32cCodec()]  # zarr verifies every object on read
    return group.create_array(spec.path, shape=spec.shape, dtype=str if spec.dtype == "str" else spec.dtype,
                              chunks=spec.chunks, shards=spec.shards, fill_value=fill, compressors=compressors,
                              dimension_names=spec.dims, config={"write_empty_chunks": True})


def create_store(url: str, manifest: SceneManifest, tables: list[SceneTables],
                 storage_options: dict[str, Any] | None = None) -> zarr.Group:
    """Every array and the create-time tables; the manifest is written last (it marks a usable store)."""
    group = open_store(url, "w", storage_options)
    for spec in expected_root_arrays(manifest):
        _create(group, spec)
    for t in tables:
        for spec in expected_scene_arrays(manifest, t.info):
            _create(group, spec)
        base = f"scenes/{t.info.name}"
        group[base].attrs[SCENE_ATTR] = t.info.model_dump(mode="json")
        group[f"{base}/frame_id"][:] = np.array(t.frame_ids, dtype=object).astype(str)
        group[f"{base}/uri"][:] = np.array(t.uris, dtype=object).astype(str)
        group[f"{base}/split"][:] = t.splits.astype(np.uint8)
        group[f"{base}/pairs/edges"][:] = t.edges.astype(np.int32)
        if t.info.has_gt:
            group[f"{base}/gt_cam2world"][:] = t.gt_cam2world
            group[f"{base}/gt_intrinsics"][:] = t.gt_intrinsics
    finish_creation(group, manifest.model_dump(mode="json"))
    return group


def check_compatible(group: zarr.Group, want: SceneManifest, url: str) -> SceneManifest:
    have = read_scene_manifest(group)
    problems = [f"{f}: store has {getattr(have, f)!r}, this run has {getattr(want, f)!r}"
                for f in IDENTITY_FIELDS if getattr(have, f) != getattr(want, f)]
    hn, wn = have.network.model_dump(mode="json"), want.network.model_dump(mode="json")
    problems += [f"network.{f}: store has {hn[f]!r}, this run has {wn[f]!r}"
                 for f in NETWORK_IDENTITY if hn[f] != wn[f]]
    if problems:
        raise StoreMismatch(f"scene store {url} was created with a different configuration; refusing to mix:\n  - "
                            + "\n  - ".join(problems) + "\nUse a new store path (or delete this one).")
    return have


def scene_index(manifest: SceneManifest, scene: str) -> int:
    try:
        return manifest.scenes.index(scene)
    except ValueError:
        raise ValueError(f"scene {scene!r} not in the store (scenes: {', '.join(manifest.scenes)})") from None


def done_flags(group: zarr.Group) -> tuple[np.ndarray, np.ndarray]:
    return group["progress/pairs_done"][:].astype(bool), group["progress/scene_done"][:].astype(bool)


def require_aligned(group: zarr.Group, manifest: SceneManifest, scene: str) -> None:
    """ValueError unless `scene` is in the store and aligned (its world pointmaps are written)."""
    if not done_flags(group)[1][scene_index(manifest, scene)]:
        raise ValueError(f"scene {scene!r} is not aligned yet (progress/scene_done is 0); run `distillkit "
                         f"cache-scenes`, the align-scenes flow or `distillkit align` first")


def read_intact(arr: zarr.Array, sel: Any = Ellipsis, check_objects: bool = True) -> np.ndarray:
    """arr[sel] of an aligned scene, refusing damage by name: a storage object that is gone (zarr reads it back as
    fill values) or that fails its checksum. `check_objects=False` skips the listing (a loop that checked once)."""
    try:
        gone = missing_objects(arr) if check_objects else 0  # one listing
        if gone:
            raise ValueError(f"{gone} storage object(s) missing")
        return np.asarray(arr[sel])
    except ValueError as e:
        raise ValueError(f"{arr.path} is damaged ({' '.join(str(e).split())[:120]}); `distillkit validate --deep` "
                         "names the object") from None


def set_flag(group: zarr.Group, name: str, index: int, value: int) -> None:
    group[f"progress/{name}"][index] = value


def write_frames(group: zarr.Group, scene: str, images: np.ndarray, gt_depth: np.ndarray | None) -> None:
    base = f"scenes/{scene}"
    group[f"{base}/image"][:] = images
    if gt_depth is not None:
        group[f"{base}/gt_depth"][:] = gt_depth.astype(np.float32)


class PairWriter:
    """Accepts pair batches in edge order; writes whole storage shards (the last one may be short)."""

    def __init__(self, group: zarr.Group, scene: str):
        self.arrays = {k: group[f"scenes/{scene}/pairs/{k}"] for k in PAIR_KEYS}
        first = self.arrays["pts1"]
        self.E, self.shard = first.shape[0], (first.shards or first.chunks)[0]
        self.start, self.buf = 0, {k: [] for k in PAIR_KEYS}
        self.pending = 0

    def add(self, start: int, stop: int, batch: dict[str, np.ndarray]) -> None:
        if start != self.start + self.pending:
            raise ValueError(f"pair batches out of order: got {start}, expected {self.start + self.pending}")
        for k in PAIR_KEYS:
            self.buf[k].append(batch[k])
        self.pending += stop - start
        while self.pending >= self.shard or (self.pending and self.start + self.pending == self.E):
            self._flush(min(self.shard, self.pending))

    def _flush(self, count: int) -> None:
        for k in PAIR_KEYS:
            data = np.concatenate(self.buf[k])
            self.arrays[k][self.start:self.start + count] = data[:count]
            self.buf[k] = [data[count:]] if count < len(data) else []
        self.start += count
        self.pending -= count

    def close(self) -> None:
        if self.pending:
            self._flush(self.pending)
        if self.start != self.E:
            raise ValueError(f"pair outputs incomplete: {self.start}/{self.E} edges written")


class _EdgeArray:
    """Read-only ``[E, ...]`` view of a zarr array for the aligner, which only indexes whole edges (``a[e]``);
    a small LRU keeps the edges of the image being solved decoded."""

    def __init__(self, arr: zarr.Array, cache: int = 64):
        self.arr, self.shape, self.ndim, self.dtype = arr, tuple(arr.shape), arr.ndim, arr.dtype
        self.cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self.size = cache

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, e):
        if not isinstance(e, (int, np.integer)):
            return self.arr[e]
        e = int(e)
        if e in self.cache:
            self.cache.move_to_end(e)
            return self.cache[e]
        out = self.arr[e]
        self.cache[e] = out
        if len(self.cache) > self.size:
            self.cache.popitem(last=False)
        return out


def read_pairs(group: zarr.Group, scene: str, max_memory_bytes: int = 2 << 30):
    """The stored pair outputs (``PairPredictions``); loaded whole when they fit ``max_memory_bytes``, else read
    edge by edge."""
    from distillkit.geometry.predictions import PairPredictions
    base = f"scenes/{scene}/pairs"
    edges = group[f"{base}/edges"][:]
    arrays = {k: group[f"{base}/{k}"] for k in PAIR_KEYS}
    total = sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in arrays.values())
    if total <= max_memory_bytes:
        data = {k: a[:] for k, a in arrays.items()}
    else:
        log.info("scene %s: pair outputs (%.1f GB) read edge by edge", scene, total / 1e9)
        data = {k: _EdgeArray(a) for k, a in arrays.items()}
    return PairPredictions(edges, data["pts1"], data["pts2"], data["conf1"], data["conf2"])


def read_scene_gt(group: zarr.Group, scene: str) -> dict[str, np.ndarray | None]:
    info = read_scene_info(group, scene)
    base = f"scenes/{scene}"
    return {"cam2world": group[f"{base}/gt_cam2world"][:] if info.has_gt else None,
            "intrinsics": group[f"{base}/gt_intrinsics"][:] if info.has_gt else None,
            "depth": group[f"{base}/gt_depth"][:] if info.has_gt_depth else None}


def write_alignment(group: zarr.Group, scene: str, result, record: SceneAlignment) -> None:
    """The aligned scene (an ``AlignResult``) and its record; the caller sets ``scene_done`` afterwards."""
    base = f"scenes/{scene}"
    group[f"{base}/pts3d"][:] = result.pts3d.astype(np.float32)
    group[f"{base}/conf"][:] = result.im_conf.astype(np.float32)
    group[f"{base}/depth"][:] = result.depth.astype(np.float32)
    group[f"{base}/mask"][:] = result.masks.astype(bool)
    group[f"{base}/cam2world"][:] = result.cam2world
    group[f"{base}/intrinsics"][:] = result.K
    group[base].attrs[ALIGNMENT_ATTR] = record.model_dump(mode="json")

