"""Deep checks of a feature store: read every byte, so that zarr verifies every crc32c checksum.

Each shard-written array is read one shard (one storage object, or one chunk of S rows) at a time; a shard that
fails is read again row by row to name the samples whose bytes are damaged. When every row of a shard fails, the
damage is in what all rows share: the shard index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from pathlib import Path

import numpy as np
import zarr
from zarr.storage import LocalStore

from distillkit_schemas import Problem, expected_arrays, validate_feature_structure
from distillkit_schemas.v1 import Manifest, index_arrays


@dataclass(frozen=True)
class Damage:
    array: str
    shard: int
    rows: tuple[int, ...]  # damaged sample rows; empty = the shard index (every row unreadable)
    error: str

    def problem(self, ids: np.ndarray | None) -> Problem:
        if self.error == "storage object missing":
            return Problem(self.array, f"shard {self.shard}: its storage object is missing (deleted?); "
                                       "`distillkit cache --repair` recomputes it")
        if not self.rows:
            what = f"shard {self.shard}: checksum mismatch in the shard index ({self.error})"
        else:
            names = ", ".join(f"{r} ({ids[r]})" if ids is not None and r < len(ids) else str(r)
                              for r in self.rows[:8])
            more = f" and {len(self.rows) - 8} more" if len(self.rows) > 8 else ""
            what = f"shard {self.shard}: checksum mismatch in sample(s) {names}{more} ({self.error})"
        return Problem(self.array, what)


def has_checksums(arr: zarr.Array) -> bool:
    """True when the array's chunks (or its shards' inner chunks) end in a crc32c codec."""
    def names(codecs) -> list[str]:
        out = []
        for c in codecs:
            out.append(type(c).__name__)
            out += names(getattr(c, "codecs", ()))
        return out
    return "Crc32cCodec" in names(arr.metadata.codecs)


def _rows_failing(arr: zarr.Array, start: int, stop: int) -> list[int]:
    bad = []
    for r in range(start, stop):
        try:
            arr[r]
        except ValueError:
            bad.append(r)
    return bad


def check_shard(arr: zarr.Array, path: str, shard: int, shard_size: int, n: int) -> Damage | None:
    """Read shard `shard` of a per-sample array; None if every checksum matches."""
    start, stop = shard * shard_size, min((shard + 1) * shard_size, n)
    try:
        arr[start:stop]
        return None
    except ValueError as e:
        error = str(e).split(".")[0]
    bad = _rows_failing(arr, start, stop)
    whole = len(bad) == stop - start and stop - start > 1
    return Damage(path, shard, () if whole else tuple(bad), error)


def _per_shard_arrays(manifest: Manifest, provs) -> list[str]:
    return [s.path for s in expected_arrays(manifest, provs) if s.dims[:1] == ("sample",)]


def _per_shard_stats(manifest: Manifest, provs) -> list[str]:
    return [s.path for s in expected_arrays(manifest, provs) if s.dims[:1] == ("shard",)]


def object_keys(arr: zarr.Array) -> set[str]:
    """The storage keys of every object (shard) an array has: one listing, local or fsspec."""
    from zarr.core.sync import sync

    async def collect(prefix: str) -> set[str]:
        return {k async for k in arr.store.list_prefix(prefix)}

    return sync(collect(f"{arr.path}/"))


def missing_objects(arr: zarr.Array) -> int:
    """How many storage objects of a completely written float array are gone (zarr would read them back as NaN).
    Other arrays give 0: zarr skips writing a chunk equal to the fill value (all zeros, all False), so there an
    absent object can be legitimate data."""
    fill = arr.fill_value
    if not arr.shape or not all(arr.shape) or not (isinstance(fill, (float, np.floating)) and np.isnan(fill)):
        return 0
    outer = arr.shards or arr.chunks
    want = int(np.prod([-(-d // c) for d, c in zip(arr.shape, outer)]))
    return max(0, want - len(object_keys(arr) - {f"{arr.path}/zarr.json"}))


def missing_shards(group: zarr.Group, manifest: Manifest, provs) -> list[Damage]:
    """Every (array, shard) marked done whose storage object is gone: zarr would read it back as fill values
    (NaN, zeros) without a word. One listing per per-shard array."""
    done = np.flatnonzero(group["progress/shard_done"][:])
    by_writer = {sp.path for sp in expected_arrays(manifest, provs) if sp.written_by == "shard"}
    out = []
    # only what the shard writer writes: it always writes every object (write_empty_chunks); the create-time
    # columns of an append skip all-fill chunks (a split of all zeros), so their absence is no damage
    for path, rows_per_shard in [(p, manifest.shard_size) for p in _per_shard_arrays(manifest, provs)
                                 if p in by_writer] + [(p, 1) for p in _per_shard_stats(manifest, provs)
                                                       if p in by_writer]:
        arr = group[path]
        outer = (arr.shards or arr.chunks)[0]
        have = object_keys(arr)
        encode = arr.metadata.chunk_key_encoding.encode_chunk_key
        for s in done:
            key = f"{arr.path}/{encode((s * rows_per_shard // outer,) + (0,) * (arr.ndim - 1))}"
            if key not in have:
                out.append(Damage(path, int(s), (), "storage object missing"))
    return out


def deep_check(group: zarr.Group, progress: Callable[[int, int], None] | None = None) -> tuple[list[Damage],
                                                                                                 list[Problem]]:
    """Every damaged (array, shard) of a feature store, plus notes (arrays without checksums, small arrays)."""
    manifest, provs, problems = validate_feature_structure(group)
    if manifest is None or problems:
        return [], problems
    notes: list[Problem] = []
    damage: list[Damage] = []
    per_sample = _per_shard_arrays(manifest, provs)
    stats = _per_shard_stats(manifest, provs)
    unchecked = [p for p in per_sample + stats if not has_checksums(group[p])]
    if unchecked:
        notes.append(Problem(", ".join(unchecked), "no crc32c checksums (store written before checksums): bytes "
                                                   "read but not verified"))
    n, size, k = manifest.n_samples, manifest.shard_size, manifest.n_shards
    arrays = {p: group[p] for p in per_sample + stats}
    damage += missing_shards(group, manifest, provs)
    gone = {(d.array, d.shard) for d in damage}
    for s in range(k):
        for path in per_sample:
            if (path, s) in gone:
                continue
            d = check_shard(arrays[path], path, s, size, n)
            if d:
                damage.append(d)
        for path in stats:  # one chunk per shard
            if (path, s) in gone:
                continue
            d = check_shard(arrays[path], path, s, 1, k)
            if d:
                damage.append(Damage(path, s, (), d.error))
        if progress:
            progress(s + 1, k)
    finalize_written = [sp.path for sp in expected_arrays(manifest, provs) + index_arrays(manifest)
                        if sp.written_by == "finalize"]
    for path in finalize_written:
        try:
            group[path][...]
        except ValueError as e:
            damage.append(Damage(path, -1, (), str(e).split(".")[0]))
    return damage, notes


def damage_problems(group: zarr.Group, damage: list[Damage]) -> list[Problem]:
    try:
        ids = group["samples/id"][:]
    except ValueError:  # the id table itself is damaged
        ids = None
    out = []
    for d in damage:
        if d.shard < 0:
            out.append(Problem(d.array, f"checksum mismatch in the merged statistics ({d.error}); "
                                        "`distillkit cache --repair` recomputes them"))
        else:
            out.append(d.problem(ids))
    return out


def delete_shard_object(arr: zarr.Array, shard: int) -> None:
    """Remove the object holding `shard` of an array split by shard along axis 0, so it is written afresh:
    zarr reads an existing shard's index before it rewrites the shard, and a damaged index cannot be read."""
    key = f"{arr.path}/{arr.metadata.chunk_key_encoding.encode_chunk_key((shard,) + (0,) * (arr.ndim - 1))}"
    store = arr.store
    if isinstance(store, LocalStore):
        (Path(store.root) / key).unlink(missing_ok=True)
        return
    from fsspec.asyn import sync

    fs = store.fs
    path = f"{store.path.rstrip('/')}/{key}"
    if getattr(fs, "async_impl", False):
        sync(fs.loop, fs._rm, path)
    else:
        fs.rm(path)
