"""Whole-shard reads without zarr-python's per-chunk machinery, for the layouts distillkit writes.

zarr-python decodes a shard chunk by chunk through its async codec pipeline, about 0.5 GB/s here for an
uncompressed 50 MB shard against ~10 GB/s for a memory copy (see `distillkit bench loader`). The shards distillkit
writes are simple: shards split only along the sample axis, one sample per inner chunk, inner codecs `bytes`
(+ optional zstd) (+ optional crc32c), index at the end (`bytes` + optional crc32c). For exactly that case this
module fetches the shard object with one store request and decodes it with numpy; anything else falls back to zarr.

The layout is read from the array's metadata document (`Array.metadata.to_dict()`, the zarr.json of the Zarr v3
spec) and chunk keys follow the spec's key encodings, so nothing here depends on zarr-python internals, except the
fetch from a non-local store: that needs zarr's sync bridge, imported under a guard (absent: zarr reads the shard).
"""

from __future__ import annotations

import logging
import mmap
import os
from typing import Any

import numpy as np
import zarr
from numcodecs import Zstd
from zarr.storage import LocalStore

from distillkit.store.checksum import crc32c

try:  # zarr-python's event-loop bridge is internal (zarr.core): present in 3.1-3.4, guarded for later releases
    from zarr.abc.store import OffsetByteRequest
    from zarr.buffer import default_buffer_prototype
    from zarr.core.sync import sync as _sync
except ImportError:  # pragma: no cover - depends on the installed zarr
    _sync = None

log = logging.getLogger("distillkit")

EMPTY = np.uint64(2**64 - 1)
_ZSTD = Zstd()
_NOTED: set[str] = set()


class ChecksumError(ValueError):
    """A crc32c checksum of a shard's index or of one of its rows does not match its bytes."""


def _stored(buf: np.ndarray) -> int:
    return int(buf[-4:].view("<u4")[0])


def _names(codecs: list[dict]) -> list[str]:
    return [c.get("name") for c in codecs]


def _chunk_key(encoding: dict, coords: tuple[int, ...]) -> str:
    """The storage key of a chunk (here: a shard) per the spec's `default` and `v2` chunk key encodings."""
    name, sep = encoding.get("name"), (encoding.get("configuration") or {}).get("separator")
    if name == "default":
        return (sep or "/").join(("c",) + tuple(map(str, coords)))
    if name == "v2":
        return (sep or ".").join(map(str, coords)) or "0"
    raise ValueError(f"chunk key encoding {name!r} not supported")


def _note(reason: str, path: str) -> None:
    """Say once per reason that shards go through zarr instead (slower, same values)."""
    if reason not in _NOTED:
        _NOTED.add(reason)
        log.warning("direct shard reader unavailable (%s); shards of %s are read through zarr (slower)", reason, path)


class DirectShardReader:
    missing_ok = True  # an absent object reads as fill values (zarr's rule); readers of valid rows turn it off
    mapped = True  # local objects memory-mapped (one copy, into the batch); False: read (see _fetch)

    def __init__(self, arr: zarr.Array, verify: bool = True):
        meta = arr.metadata.to_dict()
        self.path = arr.path
        codecs = meta["codecs"]
        if meta.get("zarr_format") != 3 or _names(codecs) != ["sharding_indexed"]:
            raise ValueError("not a sharded Zarr v3 array")
        cfg = codecs[0]["configuration"]
        inner, idx = cfg["codecs"], cfg["index_codecs"]
        names = _names(inner)
        if names not in (["bytes"], ["bytes", "zstd"], ["bytes", "crc32c"], ["bytes", "zstd", "crc32c"]):
            raise ValueError(f"inner codecs {names} not supported")
        if cfg.get("index_location", "end") != "end":
            raise ValueError("shard index must be at the end")
        if _names(idx) not in (["bytes"], ["bytes", "crc32c"]):
            raise ValueError(f"index codecs {_names(idx)} not supported")
        shape = tuple(meta["shape"])
        grid = meta["chunk_grid"]
        if grid.get("name") != "regular":
            raise ValueError(f"chunk grid {grid.get('name')!r} not supported")
        shard, chunk = tuple(grid["configuration"]["chunk_shape"]), tuple(cfg["chunk_shape"])
        if not shape or chunk[0] != 1 or chunk[1:] != shape[1:] or shard[1:] != shape[1:]:
            raise ValueError("only shards split along the first axis, one row per chunk, are supported")
        self.out_dtype = np.dtype(arr.dtype)
        if self.out_dtype.kind not in "biufc":
            raise ValueError(f"dtype {self.out_dtype} not supported")
        endian = (inner[0].get("configuration") or {}).get("endian", "little")
        self.dtype = self.out_dtype.newbyteorder("<" if endian == "little" else ">")
        self.zstd = "zstd" in names
        self.row_crc = names[-1] == "crc32c"
        self.index_crc = len(idx) == 2
        self.verify = verify
        self.index_bytes = shard[0] * 16 + (4 if self.index_crc else 0)
        self.rows_per_shard, self.row_shape, self.n = shard[0], shape[1:], shape[0]
        self.row_bytes = int(np.prod(self.row_shape)) * self.dtype.itemsize
        self.fill = arr.fill_value
        self._store, self._arr = arr.store, arr
        encoding, tail = meta["chunk_key_encoding"], (0,) * (len(shape) - 1)
        prefix = f"{arr.path}/" if arr.path else ""
        self._key = lambda s: prefix + _chunk_key(encoding, (s,) + tail)
        if not isinstance(self._store, LocalStore) and _sync is None:
            raise RuntimeError("no zarr.core.sync to fetch from a non-local store")

    @classmethod
    def maybe(cls, arr: zarr.Array, verify: bool = True) -> "DirectShardReader | None":
        """The direct reader for `arr`, or None (zarr reads it) with a note saying why, once per reason."""
        try:
            return cls(arr, verify)
        except ValueError as e:  # a layout distillkit does not write for bulk arrays (e.g. blosc): expected
            log.debug("direct shard reader not used for %s: %s", arr.path, e)
        except Exception as e:  # noqa: BLE001 - metadata of a zarr release this was not written against
            _note(f"zarr {zarr.__version__}: {type(e).__name__}: {e}", arr.path)
        return None

    def _damaged(self, s: int, what: str, stored: int, computed: int) -> ChecksumError:
        return ChecksumError(f"{self.path}: shard {s}, {what}: crc32c checksum mismatch "
                             f"(stored {stored:#010x}, computed {computed:#010x})")

    def _index(self, s: int, data: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
        if len(data) < self.index_bytes:
            raise ChecksumError(f"{self.path}: shard {s}: object of {len(data)} bytes is shorter than its index "
                                f"({self.index_bytes} bytes)")
        raw = data[len(data) - self.index_bytes:]
        if self.index_crc and self.verify and crc32c(raw[:-4]) != _stored(raw):
            raise self._damaged(s, "shard index", _stored(raw), crc32c(raw[:-4]))
        index = np.frombuffer(raw[: self.rows_per_shard * 16], dtype="<u8").reshape(-1, 2)[:rows]
        off, nb = index[:, 0], index[:, 1]
        present = off != EMPTY
        if (off[present] + nb[present] > len(data) - self.index_bytes).any():
            raise ChecksumError(f"{self.path}: shard {s}: the shard index points past the data (damaged index)")
        return off, nb

    def _check_row(self, s: int, i: int, raw: np.ndarray) -> np.ndarray:
        """The payload of a row (its trailing checksum verified and removed)."""
        if not self.row_crc:
            return raw
        payload = raw[:-4]
        if self.verify:
            computed = crc32c(payload)
            if computed != _stored(raw):
                raise self._damaged(s, f"row {s * self.rows_per_shard + i} (sample index)", _stored(raw), computed)
        return payload

    def read_shard(self, s: int) -> np.ndarray:
        """All rows of shard s (the last shard may be short)."""
        rows = min(self.rows_per_shard, self.n - s * self.rows_per_shard)
        data, done = _fetch_object(self, s, rows)
        if done is not None:
            return done
        off, nb = self._index(s, data, rows)
        stride = self.row_bytes + (4 if self.row_crc else 0)
        if not self.zstd and (off != EMPTY).all() and (nb == stride).all() \
                and (np.diff(off.astype(np.int64)) == stride).all():  # contiguous: one view, no per-row copy
            start = int(off[0])
            block = data[start:start + rows * stride].reshape(rows, stride)
            for i in range(rows if self.row_crc and self.verify else 0):
                self._check_row(s, i, block[i])
            return block[:, :self.row_bytes].view(self.dtype).reshape(rows, *self.row_shape)
        out = np.empty((rows, *self.row_shape), self.out_dtype)
        for i in range(rows):
            if off[i] == EMPTY:
                out[i] = self.fill
                continue
            raw = self._check_row(s, i, data[int(off[i]):int(off[i]) + int(nb[i])])
            if self.zstd:
                _ZSTD.decode(raw, out=out[i].reshape(-1).view(np.uint8))  # straight into the output: no temp
            else:
                out[i] = raw.view(self.dtype).reshape(self.row_shape)
        return out


def _fetch_object(reader: "DirectShardReader | DirectChunkReader", s: int, rows: int
                  ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(the stored object of shard s, None) to parse; or (None, its rows) when there is nothing to parse: fill
    values for an absent object, zarr's own read when the fetch fails in a way a newer zarr may cause."""
    try:
        data = _fetch(reader._store, reader._key(s), reader.mapped)
    except (OSError, ValueError):
        raise
    except Exception as e:  # noqa: BLE001 - zarr's sync bridge changed (a newer zarr): zarr reads the shard
        _note(f"zarr {zarr.__version__}: fetch failed with {type(e).__name__}: {e}", reader.path)
        start = s * reader.rows_per_shard
        return None, reader._arr[start:start + rows]
    if data is None:
        if not reader.missing_ok:
            raise ValueError(f"{reader.path}: shard {s}: its storage object is missing")
        return None, np.full((rows, *reader.row_shape), reader.fill, reader.out_dtype)
    return data, None


def _fetch(store: Any, key: str, mapped: bool = True) -> np.ndarray | None:
    """One object of the store as a uint8 array (None if absent). `mapped=False`: read into memory instead: the
    read releases the GIL while the disk works, where a page fault inside a checksum call would hold it (a scan of
    every byte on threads then overlaps its disk reads with its checks)."""
    if isinstance(store, LocalStore) and not mapped:
        try:
            with open(os.path.join(str(store.root), key), "rb", buffering=0) as f:
                buf = np.empty(os.fstat(f.fileno()).st_size, np.uint8)
                got = f.readinto(memoryview(buf)) if len(buf) else 0
                return buf[:got]
        except FileNotFoundError:
            return None
    if isinstance(store, LocalStore):
        # mapped, not read: rows are then copied once, from the page cache straight into the batch. Safe because
        # every object is replaced by rename (zarr's atomic writes): a mapping keeps the version it opened
        path = os.path.join(str(store.root), key)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size == 0:
                    return np.empty(0, np.uint8)
                mapped = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)
                if hasattr(mapped, "madvise"):  # every byte will be read: one readahead, not a fault per page
                    mapped.madvise(mmap.MADV_WILLNEED)
                return np.frombuffer(mapped, np.uint8)
        except FileNotFoundError:
            return None
    # a ranged read ("bytes=0-"): s3fs asks for the size first (one more round trip) before a whole-object GET
    buf: Any = _sync(store.get(key, prototype=default_buffer_prototype(), byte_range=OffsetByteRequest(0)))
    return None if buf is None else buf.as_numpy_array()


class DirectChunkReader:
    """The same one-request reads for an unsharded array whose chunks are whole shards of rows (the CLS tokens:
    [N, C] in chunks of [shard_size, C]), codecs `bytes` (+ zstd) (+ crc32c over the chunk); also the string
    columns (`vlen-utf8` instead of `bytes`), which zarr decodes ~50x slower through its codec pipeline."""

    missing_ok = True  # an absent object reads as fill values (zarr's rule); readers of valid rows turn it off
    mapped = True  # local objects memory-mapped (one copy, into the batch); False: read (see _fetch)

    def __init__(self, arr: zarr.Array, verify: bool = True):
        meta = arr.metadata.to_dict()
        self.path = arr.path
        codecs = meta["codecs"]
        names = _names(codecs)
        self.vlen = names[:1] == ["vlen-utf8"]
        if meta.get("zarr_format") != 3 or names[1:] not in ([], ["zstd"], ["crc32c"], ["zstd", "crc32c"]) \
                or names[0] not in ("bytes", "vlen-utf8"):
            raise ValueError(f"codecs {names} not supported")
        grid = meta["chunk_grid"]
        shape = tuple(meta["shape"])
        chunk = tuple(grid["configuration"]["chunk_shape"]) if grid.get("name") == "regular" else ()
        if not shape or not chunk or chunk[1:] != shape[1:]:
            raise ValueError("only chunks split along the first axis are supported")
        self.out_dtype = np.dtype(arr.dtype)
        if self.out_dtype.kind not in ("T" if self.vlen else "biufc") or (self.vlen and len(shape) != 1):
            raise ValueError(f"dtype {self.out_dtype} with codec {names[0]} not supported")
        endian = (codecs[0].get("configuration") or {}).get("endian", "little")
        self.dtype = self.out_dtype if self.vlen else self.out_dtype.newbyteorder("<" if endian == "little" else ">")
        self.zstd, self.crc, self.verify = "zstd" in names, names[-1] == "crc32c", verify
        self.rows_per_shard, self.row_shape, self.n = chunk[0], shape[1:], shape[0]
        self.fill = arr.fill_value
        self._store, self._arr = arr.store, arr
        encoding, tail = meta["chunk_key_encoding"], (0,) * (len(shape) - 1)
        prefix = f"{arr.path}/" if arr.path else ""
        self._key = lambda s: prefix + _chunk_key(encoding, (s,) + tail)
        if not isinstance(self._store, LocalStore) and _sync is None:
            raise RuntimeError("no zarr.core.sync to fetch from a non-local store")

    def read_shard(self, s: int) -> np.ndarray:
        """All rows of chunk s (the last one may be short: zarr stores edge chunks at full size)."""
        rows = min(self.rows_per_shard, self.n - s * self.rows_per_shard)
        data, done = _fetch_object(self, s, rows)
        if done is not None:
            return done
        if self.crc:
            if self.verify and crc32c(data[:-4]) != _stored(data):
                raise ChecksumError(f"{self.path}: chunk {s}: crc32c checksum mismatch (stored {_stored(data):#010x}, "
                                    f"computed {crc32c(data[:-4]):#010x})")
            data = data[:-4]
        full = (self.rows_per_shard, *self.row_shape)
        raw = _ZSTD.decode(data) if self.zstd else data
        if self.vlen:
            return _vlen_utf8(self.path, s, bytes(raw))[:rows]
        out = np.frombuffer(raw, self.dtype).reshape(full)[:rows].astype(self.out_dtype, copy=False)
        return out if out.flags.writeable else out.copy()


def _vlen_utf8(path: str, s: int, buf: bytes) -> np.ndarray:
    """The `vlen-utf8` codec's layout (numcodecs'): item count, then each item's length and bytes (uint32 LE)."""
    n, pos, out = int.from_bytes(buf[:4], "little"), 4, []
    try:
        for _ in range(n):
            size = int.from_bytes(buf[pos:pos + 4], "little")
            out.append(buf[pos + 4:pos + 4 + size].decode())
            pos += 4 + size
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: chunk {s}: malformed vlen-utf8 ({e})") from None
    if pos != len(buf):
        raise ValueError(f"{path}: chunk {s}: malformed vlen-utf8 ({n} items do not fill {len(buf)} bytes)")
    return np.array(out, dtype=np.dtypes.StringDType())


def direct_reader(arr: zarr.Array, verify: bool = True, missing_ok: bool = True
                  ) -> "DirectShardReader | DirectChunkReader | None":
    """A one-request-per-shard reader for a sharded array, or for an unsharded one chunked in whole shards.
    `missing_ok=False`: an absent object is an error, not fill values (a shard that holds valid samples always
    has its objects: the shard writer writes every one)."""
    sharded = _names(arr.metadata.to_dict().get("codecs", [])) == ["sharding_indexed"]
    if sharded:
        reader = DirectShardReader.maybe(arr, verify)
        if reader is not None:
            reader.missing_ok = missing_ok
        return reader
    try:
        reader = DirectChunkReader(arr, verify)
        reader.missing_ok = missing_ok
        return reader
    except ValueError as e:
        log.debug("direct chunk reader not used for %s: %s", arr.path, e)
    except Exception as e:  # noqa: BLE001 - metadata of a zarr release this was not written against
        _note(f"zarr {zarr.__version__}: {type(e).__name__}: {e}", arr.path)
    return None
