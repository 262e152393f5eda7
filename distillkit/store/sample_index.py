"""The sample index: one version's sample table (id, valid, split) in a few large chunks, written by finalize.

samples/* is chunked one shard per object so that shard writers never share one; a reader that needs the whole
table would then fetch 3 objects per shard (a million requests for a DUNE-size store on S3). finalize, which runs
alone under the store's lease, writes the same columns into `index/v<version>/` in chunks of 2^20 rows and names the
group in the manifest. The index of the previous version is kept (a reader may be opening it right now); older ones
are deleted.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from distillkit_schemas import Manifest
from distillkit_schemas.v1 import INDEX_ARRAYS, INDEX_ROWS, index_arrays

from distillkit.store.ids import row_blocks

ROOT = "index"


def write(group: zarr.Group, manifest: Manifest, columns: dict[str, np.ndarray]) -> str:
    """Write the index of `manifest.version` (idempotent: a killed finalize writes it again) and return its path."""
    path = f"{ROOT}/v{manifest.version}"
    n = manifest.n_samples
    for spec in index_arrays(manifest.model_copy(update={"sample_index": path})):
        key = spec.path.rsplit("/", 1)[-1]
        values = columns[key]
        if len(values) != n:
            raise ValueError(f"sample index column {key}: {len(values)} rows for a store of {n} samples")
        arr = group.create_array(spec.path, shape=spec.shape, dtype=str if spec.dtype == "str" else spec.dtype,
                                 chunks=spec.chunks, fill_value="" if spec.dtype == "str" else 0,
                                 compressors=[ZstdCodec(level=3), Crc32cCodec()], dimension_names=spec.dims,
                                 overwrite=True, config={"write_empty_chunks": True})
        arr[:] = _as_str(values) if spec.dtype == "str" else np.asarray(values, spec.dtype)
    if "digest" in columns:  # beside the schema's columns: what the next re-run diffs its listing against
        arr = group.create_array(f"{path}/{DIGEST}", shape=(n,), dtype="uint64", chunks=(min(max(n, 1), INDEX_ROWS),),
                                 fill_value=0, compressors=[ZstdCodec(level=3), Crc32cCodec()],
                                 dimension_names=("sample",), overwrite=True, config={"write_empty_chunks": True})
        arr[:] = np.asarray(columns["digest"], np.uint64)
    return path


DIGEST = "digest"  # per row: 64 bits of blake2b over (id, uri, signature); equal digests = the same listed file


def entry_digests(ids, uris, signatures) -> np.ndarray:
    """The digest of each listed sample (the signature "" where the store keeps none). Columns (lists or numpy
    string arrays) are turned into Python str a block at a time."""
    out = np.empty(len(ids), np.uint64)
    for sl in row_blocks(len(ids)):
        rows = zip(*(_strs(c[sl]) for c in (ids, uris, signatures)))
        out[sl] = np.fromiter((int.from_bytes(hashlib.blake2b(f"{i}\0{u}\0{s}".encode(), digest_size=8).digest(),
                                              "little") for i, u, s in rows), np.uint64, sl.stop - sl.start)
    return out


def _strs(values) -> list:
    return values.tolist() if isinstance(values, np.ndarray) else list(values)


def digests_of(group: zarr.Group, prefix: str, start: int, stop: int, signatures: bool, ids) -> np.ndarray:
    """The digests of rows [start, stop) of samples/ (padding rows, id "", get 0: never a listed sample's)."""
    uris = group[f"{prefix}/uri"][start:stop].tolist()
    sigs = group[f"{prefix}/signature"][start:stop].tolist() if signatures else [""] * len(uris)
    ids = np.asarray(ids).tolist()
    out = entry_digests(ids, uris, sigs)
    out[[k for k, i in enumerate(ids) if not i]] = 0
    return out


def _as_str(values) -> np.ndarray:
    """Any column as numpy str (zarr returns numpy's StringDType for strings, which does not cast to str)."""
    return np.array(np.asarray(values).tolist(), dtype=object).astype(str)


def drop_old(group: zarr.Group, version: int) -> list[str]:
    """Delete the indexes older than the previous version's."""
    if ROOT not in group:
        return []
    dropped = []
    for name, _ in list(group[ROOT].groups()):
        if name.startswith("v") and name[1:].isdigit() and int(name[1:]) < version - 1:
            del group[f"{ROOT}/{name}"]
            dropped.append(name)
    return dropped


def read_columns(group: zarr.Group, prefix: str, n: int, start: int = 0, digests: bool = False,
                 keys: tuple[str, ...] = tuple(INDEX_ARRAYS)) -> dict[str, np.ndarray]:
    """`keys` (default id, valid and split) under `prefix` (`samples` or an index group), rows [start, n), fetched
    concurrently: one round trip on a remote store, not three (KeyError: missing; ValueError: damaged, e.g. a
    checksum). `digests`: an index's digest column too, where it has one."""
    arrays = {k: group[f"{prefix}/{k}"] for k in keys}
    if digests and f"{prefix}/{DIGEST}" in group:
        arrays[DIGEST] = group[f"{prefix}/{DIGEST}"]
    with ThreadPoolExecutor(len(arrays)) as pool:
        return dict(zip(arrays, pool.map(lambda a: a[start:n], arrays.values())))


__all__ = ["DIGEST", "INDEX_ROWS", "digests_of", "entry_digests", "drop_old", "read_columns", "write"]
