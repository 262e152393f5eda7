"""Deep checks of a feature store: read every byte, so that every crc32c checksum is verified.

Shards are checked on a bounded thread pool, a window of consecutive shards per job; each array is opened once and
read one shard (one storage object) per call through the direct reader where its layout allows (one request, numpy
decode), through zarr otherwise (the string columns: a window per call). A shard that fails is read again by zarr,
row by row, to name the samples whose bytes are damaged. When every row of a shard fails, the damage is in what all
rows share: the shard index.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import zarr
from zarr.storage import LocalStore

from distillkit_schemas import Problem, expected_arrays, validate_feature_structure
from distillkit_schemas.v1 import Manifest, index_arrays

from distillkit.store.direct import direct_reader

WINDOW = 16  # consecutive shards per job: amortises a zarr call over the small (string) columns


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

    if isinstance(arr.store, LocalStore):  # a directory walk: half the time of zarr's listing (measured)
        root = str(arr.store.root).rstrip(os.sep) + os.sep
        return {os.path.join(d, f)[len(root):].replace(os.sep, "/")
                for d, _, files in os.walk(root + arr.path) for f in files}

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


def missing_shards(group: zarr.Group, manifest: Manifest, provs, shards: np.ndarray | None = None,
                   done: np.ndarray | None = None) -> list[Damage]:
    """Every (array, shard) marked done (of `shards`, default all) whose storage object is gone: zarr would read
    it back as fill values (NaN, zeros) without a word. One listing per per-shard array; for a small selection, one
    existence check per selected object instead. `done`: progress/shard_done, if already read."""
    done = read_whole(group["progress/shard_done"]) if done is None else done
    wanted = np.flatnonzero(done) if shards is None else np.asarray(shards)[done[np.asarray(shards)] != 0]
    by_writer = {sp.path for sp in expected_arrays(manifest, provs) if sp.written_by == "shard"}
    few = shards is not None and len(wanted) * 8 < len(done)
    out = []
    # only what the shard writer writes: it always writes every object (write_empty_chunks); the create-time
    # columns of an append skip all-fill chunks (a split of all zeros), so their absence is no damage
    for path, rows_per_shard in [(p, manifest.shard_size) for p in _per_shard_arrays(manifest, provs)
                                 if p in by_writer] + [(p, 1) for p in _per_shard_stats(manifest, provs)
                                                       if p in by_writer]:
        arr = group[path]
        outer = (arr.shards or arr.chunks)[0]
        encode = arr.metadata.chunk_key_encoding.encode_chunk_key
        keys = {int(s): f"{arr.path}/{encode((s * rows_per_shard // outer,) + (0,) * (arr.ndim - 1))}" for s in wanted}
        have = _existing(arr, list(keys.values())) if few else object_keys(arr)
        out += [Damage(path, s, (), "storage object missing") for s, key in keys.items() if key not in have]
    return out


def _existing(arr: zarr.Array, keys: list[str]) -> set[str]:
    from zarr.core.sync import sync

    async def check() -> set[str]:
        return {k for k in keys if await arr.store.exists(k)}

    return sync(check())


class ShardArrays:
    """Arrays read one shard at a time, each opened once: through the direct reader where the layout allows (one
    request, numpy decode), else zarr, a window of shards per call for small arrays (the string columns). A direct
    read that fails is retried by zarr, whose error (or success) is the verdict."""

    def __init__(self, group: zarr.Group, rows_per_shard: dict[str, int]):
        self.arrays = {p: group[p] for p in rows_per_shard}
        self.rows = rows_per_shard
        direct = {p: direct_reader(a, verify=True) for p, a in self.arrays.items()}
        self.direct = {p: d if d is not None and d.rows_per_shard == rows_per_shard[p] else None
                       for p, d in direct.items()}
        for d in self.direct.values():
            if d is not None:
                d.mapped = False  # read, not mapped: the disk then works while other threads check (GIL free)
        row_bytes = {p: a.dtype.itemsize * int(np.prod(a.shape[1:])) if a.dtype.kind in "biufc" else 256
                     for p, a in self.arrays.items()}
        self.windowed = {p for p in self.arrays
                         if self.direct[p] is None and row_bytes[p] * self.rows[p] * WINDOW <= 1 << 24}

    def read(self, path: str, first: int, last: int) -> np.ndarray:
        """Rows of shards [first, last) (ValueError: damaged)."""
        d, r, arr = self.direct[path], self.rows[path], self.arrays[path]
        if d is not None and last == first + 1:
            try:
                return d.read_shard(first)
            except Exception:  # noqa: BLE001 - zarr reads it again and says what is wrong in its own words
                pass
        return arr[first * r:min(last * r, arr.shape[0])]

    def locate(self, path: str, shard: int) -> Damage | None:
        """The damaged rows of a shard a read failed on (None: zarr reads it whole after all)."""
        arr, r = self.arrays[path], self.rows[path]
        d = check_shard(arr, path, shard, r, arr.shape[0])
        return d if d is None or r > 1 else Damage(path, d.shard, (), d.error)


def read_whole(arr: zarr.Array, threads: int = 8) -> np.ndarray:
    """A whole array chunked one object per shard (progress/shard_done: one per shard), its chunks read directly
    on a few threads: zarr's per-chunk pipeline costs ~0.4 ms a chunk, one at a time."""
    d = direct_reader(arr, verify=True)
    if d is None or not arr.shape:
        return arr[...]
    k = -(-arr.shape[0] // d.rows_per_shard)
    with ThreadPoolExecutor(threads) as pool:
        parts = list(pool.map(d.read_shard, range(k), chunksize=256))
    return np.concatenate(parts) if parts else arr[...]


def windows(shards: np.ndarray, size: int = WINDOW) -> list[tuple[int, int]]:
    """Runs of consecutive shards, at most `size` long, as [first, last) pairs."""
    shards = np.asarray(shards, np.int64)
    if not len(shards):
        return []
    breaks = np.flatnonzero(np.diff(shards) != 1) + 1
    out = []
    for run in np.split(shards, breaks):
        for i in range(0, len(run), size):
            out.append((int(run[i]), int(run[min(i + size, len(run)) - 1]) + 1))
    return out


def parallel(job: Callable[[Any], Any], items: Iterable, threads: int) -> Iterator[Any]:
    """job(item) for every item on `threads` threads, results in order; at most 2 x threads in flight, so what
    the jobs hold (one window of shards each) stays bounded however large the store."""
    items = iter(items)
    with ThreadPoolExecutor(threads) as pool:
        pending: list[Future] = []
        for item in items:
            pending.append(pool.submit(job, item))
            if len(pending) >= 2 * threads:
                yield pending.pop(0).result()
        for f in pending:
            yield f.result()


def threads_for(group: zarr.Group) -> int:
    """Latency-bound remote stores take more requests in flight than a local disk."""
    local = isinstance(group.store, LocalStore)
    return min(8, 4 * (os.cpu_count() or 1)) if local else 16


def deep_plan(manifest: Manifest, provs) -> dict[str, int]:
    """Every array read shard by shard in a deep check: its rows per shard."""
    return {**{p: manifest.shard_size for p in _per_shard_arrays(manifest, provs)},
            **{p: 1 for p in _per_shard_stats(manifest, provs)}}


def unchecked_note(group: zarr.Group, plan: dict[str, int]) -> list[Problem]:
    unchecked = [p for p in plan if not has_checksums(group[p])]
    return [Problem(", ".join(unchecked), "no crc32c checksums (store written before checksums): bytes read but "
                                          "not verified")] if unchecked else []


def window_damage(arrays: ShardArrays, first: int, last: int, gone: set[tuple[str, int]], locate: bool = True,
                  on_shard: Callable[[int, dict[str, np.ndarray | None]], Any] | None = None
                  ) -> tuple[list[Damage], list[Any]]:
    """(damage found, on_shard's results) for shards [first, last) of every array. on_shard(s, rows per array;
    None where unreadable) sees each shard as it is read. Objects already known gone are not read. `locate`:
    name the damaged rows (zarr, row by row); else a damage is (array, shard, error)."""
    damage: list[Damage] = []

    def failed(path: str, s: int, e: Exception) -> None:
        d = arrays.locate(path, s) if locate else Damage(path, s, (), str(e).split(".")[0])
        damage.extend([d] if d else [])

    window: dict[str, np.ndarray | None] = {}
    for path in arrays.windowed:
        try:
            window[path] = arrays.read(path, first, last)
        except ValueError:  # the window holds damage: shard by shard below finds where
            pass
    results = []
    for s in range(first, last):
        data: dict[str, np.ndarray | None] = {}
        for path, r in arrays.rows.items():
            data[path] = None
            if (path, s) in gone:
                continue
            if window.get(path) is not None:
                data[path] = window[path][(s - first) * r:(s - first + 1) * r]
                continue
            try:
                data[path] = arrays.read(path, s, s + 1)
            except ValueError as e:
                failed(path, s, e)
        if on_shard:
            results.append(on_shard(s, data))
    return damage, results


def finalize_damage(group: zarr.Group, manifest: Manifest, provs) -> list[Damage]:
    out = []
    for path in [sp.path for sp in expected_arrays(manifest, provs) + index_arrays(manifest)
                 if sp.written_by == "finalize"]:
        try:
            group[path][...]
        except ValueError as e:
            out.append(Damage(path, -1, (), str(e).split(".")[0]))
    return out


def deep_check(group: zarr.Group, progress: Callable[[int, int], None] | None = None,
               shards: np.ndarray | None = None) -> tuple[list[Damage], list[Problem]]:
    """Every damaged (array, shard) of a feature store (of `shards`, default all), plus notes (arrays without
    checksums, small arrays)."""
    manifest, provs, problems = validate_feature_structure(group)
    if manifest is None or problems:
        return [], problems
    plan = deep_plan(manifest, provs)
    notes = unchecked_note(group, plan)
    shards = np.arange(manifest.n_shards) if shards is None else np.asarray(shards)
    damage = missing_shards(group, manifest, provs, shards)
    gone = {(d.array, d.shard) for d in damage}
    arrays = ShardArrays(group, plan)
    jobs = windows(shards)
    done = 0
    for (a, b), (found, _) in zip(jobs, parallel(lambda w: window_damage(arrays, w[0], w[1], gone), jobs,
                                                  threads_for(group))):
        damage += found
        done += b - a
        if progress:
            progress(done, len(shards))
    return damage + finalize_damage(group, manifest, provs), notes


def damage_problems(group: zarr.Group, damage: list[Damage]) -> list[Problem]:
    ids = None
    if any(d.rows for d in damage):
        try:
            ids = group["samples/id"][:]
        except ValueError:  # the id table itself is damaged
            pass
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
