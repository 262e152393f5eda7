"""The store's summary, written by finalize: stored bytes per array and the rejected inputs of the version, so that
`distillkit inspect` answers from one object instead of listing every object of the store (10 M at DUNE's size).

A first finalize lists the store once (it wrote all of it anyway); an append adds the sizes of its new shards'
objects (one size query each) to the previous summary. Anything else (a prune or replacement rewrote old shards, a
repair, a summary of another version) lists the store again. `inspect --exact` always lists.
"""

from __future__ import annotations

import asyncio
import json
import math
from itertools import product

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from distillkit_schemas import Manifest, expected_arrays
from distillkit_schemas.validate import read_provenance

# The summary is one JSON object inside the folder of a 0-d placeholder array: zarr never lists an array's folder,
# so nothing warns about an unknown object (it would beside a group's zarr.json), and the JSON is not consolidated
# into the root metadata every reader loads.
ARRAY = "summary"
KEY = f"{ARRAY}/summary.json"
REJECTED_KEPT = 1000  # rejected inputs named in the summary (inspect --exact names them all)


def read_summary(group: zarr.Group) -> dict | None:
    """The stored summary, or None (an older store, or one never finalized)."""
    buf = sync(group.store.get(_key(group), prototype=default_buffer_prototype()))
    if buf is None:
        return None
    try:
        return json.loads(buf.to_bytes())
    except ValueError:
        return None


def write_summary(group: zarr.Group, manifest: Manifest, table: dict[str, np.ndarray], since: int = 0,
                  base_version: int | None = None) -> dict:
    """The summary of `manifest`'s version (`table`: its id and valid columns). `since` > 0 (an append whose old
    rows are untouched): the summary of `base_version` plus the objects and rejected inputs of the rows (and
    shards) from `since`. Written before the manifest that makes the version visible."""
    previous = read_summary(group) if since else None
    if previous is None or previous.get("version") != base_version:  # none yet, or a killed finalize's
        previous, since = None, 0
    provs = {t: read_provenance(group, t) for t in manifest.teachers}
    arrays, meta = {}, {}
    for spec in expected_arrays(manifest, provs):
        try:
            arr = group[spec.path]
        except KeyError:
            continue
        meta[spec.path] = sync(_sizes(arr.store, [_prefix(arr) + "zarr.json"]))[0]  # grows with the shape
        old = previous["stored_bytes"].get(spec.path) if previous else None
        added = None if old is None else _added_bytes(arr, spec.dims[0] if spec.dims else "", manifest, since)
        arrays[spec.path] = (old - previous["metadata_bytes"].get(spec.path, 0) + meta[spec.path] + added
                             if added is not None else int(arr.nbytes_stored()))
    rejected = previous["rejected"] if previous else []
    rejected = rejected + rejected_rows(group, table["valid"][since:], table["id"][since:], since,
                                        REJECTED_KEPT - len(rejected))
    summary = {"version": manifest.version, "n_samples": manifest.n_samples, "n_shards": manifest.n_shards,
               "n_valid": manifest.n_valid, "n_rejected": manifest.n_rejected, "stored_bytes": arrays,
               "total_stored_bytes": int(sum(arrays.values())), "metadata_bytes": meta, "rejected": rejected}
    data = json.dumps(summary, separators=(",", ":")).encode()
    if ARRAY not in group:
        group.create_array(ARRAY, shape=(), dtype="uint8", fill_value=0)
    sync(group.store.set(_key(group), default_buffer_prototype().buffer.from_bytes(data)))
    return summary


def rejected_rows(group: zarr.Group, valid: np.ndarray, ids: np.ndarray, start: int, limit: int) -> list[dict]:
    """The first `limit` rejected inputs among rows [start, start + len(valid)) (padding rows are none): their uri
    and reason read row by row."""
    if limit <= 0:
        return []
    rows = [r for r in np.flatnonzero(np.asarray(valid) == 0).tolist() if str(ids[r])][:limit]
    uris, errors = group["samples/uri"], group["samples/error"]
    return [{"id": str(ids[r]), "uri": str(uris[start + r]), "reason": str(errors[start + r])} for r in rows]


def _added_bytes(arr: zarr.Array, dim: str, m: Manifest, since: int) -> int | None:
    """Stored bytes of the array's objects holding rows (shards) from `since` on; None: not per sample or shard,
    or its objects straddle `since` (then the caller lists the array)."""
    lo = since if dim == "sample" else since // m.shard_size if dim == "shard" else None
    if lo is None or arr.ndim == 0:
        return None
    per_key = (arr.shards or arr.chunks)
    if lo % per_key[0]:
        return None
    grid = [range(lo // per_key[0], math.ceil(arr.shape[0] / per_key[0]))]
    grid += [range(math.ceil(n / c)) for n, c in zip(arr.shape[1:], per_key[1:])]
    keys = [_prefix(arr) + arr.metadata.encode_chunk_key(coords) for coords in product(*grid)]
    sizes = sync(_sizes(arr.store, keys))
    return int(sum(sizes))


async def _sizes(store, keys: list[str]) -> list[int]:
    async def one(k: str) -> int:
        try:
            return int(await store.getsize(k))
        except FileNotFoundError:  # an object never written (fill values)
            return 0

    return await asyncio.gather(*(one(k) for k in keys))


def _prefix(arr: zarr.Array) -> str:
    return f"{arr.store_path.path}/" if arr.store_path.path else ""


def _key(group: zarr.Group) -> str:
    """`key` relative to the group's store (the group may be a sub-path of it)."""
    base = group.store_path.path
    return f"{base}/{KEY}" if base else KEY
