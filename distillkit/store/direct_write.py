"""Whole-shard writes without zarr-python's codec pipeline, for the layouts the direct reader reads (store/direct.py).

zarr-python encodes a shard on its one event-loop thread, chunk by chunk, and joins the chunk buffers by repeated
concatenation: for a 128 MB feature shard that, not the disk, limited a caching run (and several writer threads
could not help, they all wait on that one loop). The shards distillkit writes are simple (split only along the
sample axis, one sample per inner chunk, `bytes` + `crc32c`, index at the end, `bytes` + `crc32c`), so a shard is
described here as its pieces (each row's bytes where they already are, its crc32c, the index) and written with one
gathering write into a temp file renamed over the object, as zarr's local store does (other stores: joined into
one buffer and stored with one `set`). The bytes are those zarr writes (tested).
Any other layout, a compressed one included, or a write that does not cover a whole shard goes through zarr.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
import uuid
from pathlib import Path

import numpy as np
import zarr
from zarr.storage import LocalStore

from distillkit.store.checksum import crc32c_bytes
from distillkit.store.direct import EMPTY, _chunk_key, _names

try:  # zarr-python's event-loop bridge and buffer type (zarr.core; present in 3.1-3.4)
    from zarr.core.buffer import cpu as _cpu
    from zarr.core.sync import sync as _sync
except ImportError:  # pragma: no cover - depends on the installed zarr
    _sync = None


_IOV_MAX = 1024  # buffers per writev call (POSIX guarantees at least 16; Linux takes 1024)
_DIRECT_MIN = 1 << 20  # objects from 1 MiB (features, images) skip the page cache; small ones are not worth it
_BLOCK = 4096  # O_DIRECT alignment of buffer, offset and length (any device's logical block divides it)
_NO_DIRECT: set[str] = set()  # folders whose file system refused O_DIRECT
_LOCAL = threading.local()


class _Layout:
    def __init__(self, arr: zarr.Array):
        meta = arr.metadata.to_dict()
        codecs = meta["codecs"]
        if meta.get("zarr_format") != 3 or _names(codecs) != ["sharding_indexed"]:
            raise ValueError("not a sharded Zarr v3 array")
        cfg = codecs[0]["configuration"]
        inner, idx = cfg["codecs"], cfg["index_codecs"]
        if _names(inner) not in (["bytes"], ["bytes", "crc32c"]) or _names(idx) not in (["bytes"], ["bytes", "crc32c"]):
            raise ValueError("compressed or unusual codecs")
        if cfg.get("index_location", "end") != "end" or meta["chunk_grid"].get("name") != "regular":
            raise ValueError("index not at the end, or an irregular grid")
        for c in (inner[0], idx[0]):
            if (c.get("configuration") or {}).get("endian", "little") != "little":
                raise ValueError("big-endian")
        shape = tuple(meta["shape"])
        shard, chunk = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"]), tuple(cfg["chunk_shape"])
        if not shape or chunk[0] != 1 or chunk[1:] != shape[1:] or shard[1:] != shape[1:]:
            raise ValueError("not one row per chunk")
        self.dtype = np.dtype(arr.dtype).newbyteorder("<")
        if self.dtype.kind not in "biuf":
            raise ValueError(f"dtype {self.dtype}")
        self.n, self.rows_per_shard, self.row_shape = shape[0], shard[0], shape[1:]
        self.row_crc, self.index_crc = len(inner) == 2, len(idx) == 2
        prefix = f"{arr.path}/" if arr.path else ""
        self.key = lambda s: prefix + _chunk_key(meta["chunk_key_encoding"], (s,) + (0,) * (len(shape) - 1))

    def pieces(self, values: np.ndarray) -> list:
        """The shard object of these rows (all of one shard's rows), as buffers to write one after the other: each
        row's bytes (a view of `values`, not a copy) and its crc32c, then the index and its crc32c."""
        rows = len(values)
        data = np.ascontiguousarray(values, self.dtype).reshape(rows, -1).view(np.uint8)
        stride = data.shape[1] + 4 * self.row_crc
        index = np.full((self.rows_per_shard, 2), EMPTY, "<u8")
        index[:rows, 0] = np.arange(rows, dtype=np.uint64) * np.uint64(stride)
        index[:rows, 1] = stride
        out: list = []
        for i in range(rows):
            out.append(data[i])
            if self.row_crc:
                out.append(crc32c_bytes(data[i]))
        out.append(index.view(np.uint8).reshape(-1))
        if self.index_crc:
            out.append(crc32c_bytes(out[-1]))
        return out


def _write_local(path: Path, pieces: list) -> None:
    """zarr's LocalStore write (a temp file beside the object, renamed over it: readers never see half an object;
    a killed writer leaves `*.partial` debris that writer.remove_debris knows). A large object bypasses the page
    cache (O_DIRECT): copying gigabytes into the cache costs the kernel 1-3 ms of CPU per MB on a VM, a direct
    write almost none; a file system without O_DIRECT (tmpfs) gets the gathering buffered write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{uuid.uuid4().hex}.partial")
    views = [memoryview(p) for p in pieces]  # uint8 arrays and bytes: already byte views
    nbytes = sum(len(v) for v in views)
    try:
        if not (nbytes >= _DIRECT_MIN and _write_direct(tmp, views, nbytes)):
            _write_buffered(tmp, views)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_buffered(tmp: Path, views: list) -> None:
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        while views:
            n = os.writev(fd, views[:_IOV_MAX])
            while views and n >= len(views[0]):
                n -= len(views.pop(0))
            if n:
                views[0] = views[0][n:]
    finally:
        os.close(fd)


def _write_direct(tmp: Path, views: list, nbytes: int) -> bool:
    """The object through an aligned staging buffer (one per thread), padded to whole blocks, then cut to size.
    False where the file system refuses O_DIRECT (nothing written)."""
    if not hasattr(os, "O_DIRECT") or str(tmp.parent) in _NO_DIRECT:
        return False
    size = -(-nbytes // _BLOCK) * _BLOCK
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o666)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
        _NO_DIRECT.add(str(tmp.parent))
        return False
    try:
        staging = _staging(size)
        at = 0
        for v in views:
            staging[at:at + len(v)] = v
            at += len(v)
        staging[nbytes:size] = b"\0" * (size - nbytes)
        done, out = 0, memoryview(staging)[:size]
        while done < size:
            done += os.write(fd, out[done:])
        os.ftruncate(fd, nbytes)
    finally:
        os.close(fd)
    return True


def _staging(size: int) -> mmap.mmap:
    """A page-aligned buffer (an anonymous mapping), kept per thread and grown when needed."""
    buf = getattr(_LOCAL, "staging", None)
    if buf is None or len(buf) < size:
        _LOCAL.staging = buf = mmap.mmap(-1, size)
    return buf


def write_rows(arr: zarr.Array, start: int, stop: int, values: np.ndarray) -> bool:
    """Store rows [start, stop) of `arr` as one whole shard, bypassing zarr's codec pipeline. False (nothing
    written) when the layout or the range needs zarr: the caller then writes through zarr."""
    if _sync is None:
        return False
    try:
        layout = _Layout(arr)
    except (ValueError, KeyError):
        return False
    s, rem = divmod(start, layout.rows_per_shard)
    if rem or stop != min(start + layout.rows_per_shard, layout.n) or values.shape[1:] != layout.row_shape:
        return False
    pieces = layout.pieces(values)
    if isinstance(arr.store, LocalStore):
        _write_local(Path(arr.store.root) / layout.key(s), pieces)
    else:
        data = np.concatenate([np.frombuffer(p, np.uint8) for p in pieces])
        _sync(arr.store.set(layout.key(s), _cpu.Buffer.from_array_like(data)))
    return True
