"""One store opened for reading: its arrays (opened lazily in each process), whole-shard reads through the direct
reader, and its sample table streamed a chunk at a time (what the training reader, `reader.ShardStream`, needs per
sample is one bit: `usable_bits`). The whole table at once (`ids`, `valid`, `split`) is there for tools and benches.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from typing import Any, Iterator, Literal

import numpy as np

from distillkit_schemas import Manifest, TeacherProvenance, paths
from distillkit_schemas.validate import read_manifest, read_provenance

from distillkit.store import rowbits, sample_index
from distillkit.store.codecs import Target, read_codec
from distillkit.store.direct import direct_reader
from distillkit.store.ids import SampleIds
from distillkit.store.layout import open_group
from distillkit.store.sample_index import INDEX_ROWS

log = logging.getLogger("distillkit")
TABLE_ROWS = INDEX_ROWS  # sample-table rows read at once (one index chunk): bounds what opening a store holds

Split = Literal["train", "val", "all"]


class StoreSource:
    """One store's arrays, opened lazily in each process (fsspec async clients do not survive fork)."""

    def __init__(self, url: str, teachers: list[str] | None = None, storage_options: dict[str, Any] | None = None,
                 verify: bool = True, decode: Target = "full", on_device: bool = False):
        self.url = url
        self.decode = decode  # full-width features, or a projection's coefficients ("coeffs")
        self.on_device = on_device  # read() returns the stored codes; the trainer decodes them on its device
        self.verify = verify  # crc32c of every row and shard index on the direct path (zarr always verifies)
        self.storage_options = storage_options or {}
        self.remote = "://" in url and not url.startswith("file://")  # latency-bound: read shards concurrently
        try:
            group = open_group(url, "r", self.storage_options)
        except Exception as e:
            raise ValueError(f"cannot open store {url}: {type(e).__name__}: {e}") from None
        self.manifest: Manifest = read_manifest(group)
        if self.manifest.status != "complete":
            raise ValueError(f"store {url} is not complete (status {self.manifest.status}); finish caching first")
        self.teachers = list(teachers) if teachers is not None else list(self.manifest.teachers)
        unknown = sorted(set(self.teachers) - set(self.manifest.teachers))
        if unknown:
            raise ValueError(f"store {url} has no teacher(s) {unknown}; it has {self.manifest.teachers}")
        self.provenance: dict[str, TeacherProvenance] = {t: read_provenance(group, t) for t in self.teachers}
        self.codecs = {t: read_codec(group, t, p.storage) for t, p in self.provenance.items()}
        if decode == "coeffs":
            flat = [t for t, c in self.codecs.items() if not c.storage.projects]
            if flat:
                raise ValueError(f"decode=coeffs needs PCA storage; store {url} keeps teacher(s) {flat} as "
                                 f"{[self.provenance[t].storage for t in flat]}")
            # targets live in the reduced space: the student's projectors predict K coefficients
            self.provenance = {t: p.model_copy(update={"embed_dim": self.codecs[t].storage.width(p.embed_dim)})
                               for t, p in self.provenance.items()}
        self.n = self.manifest.n_samples  # the version the manifest describes: rows an append is writing are not served
        self._bits: dict[str, np.ndarray] = {}  # usable rows per split, one bit each (see usable_bits)
        self.aligned: set[str] = set()  # stores whose ids were found equal to this one's (zip_sources)
        self._lock = threading.Lock()
        self._arrays: dict[str, Any] | None = None
        self._pid: int | None = None
        self._adopt(group)

    # ---- the sample table, streamed: a reader never holds a per-sample column of the whole store ------------
    def table_chunks(self, ids: bool = False, rows: int | None = None) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """(start, {valid, split[, id]}) for consecutive row ranges of `rows` rows (a multiple of 8): from the sample
        index (a few large objects), or samples/ (one object per shard) for a store without a readable one."""
        rows = rows or TABLE_ROWS
        group = open_group(self.url, "r", self.storage_options)
        prefix = self.manifest.sample_index or "samples"
        keys = ("valid", "split", "id") if ids else ("valid", "split")
        for start in range(0, self.n, rows):
            stop = min(start + rows, self.n)
            try:
                yield start, sample_index.read_columns(group, prefix, stop, start, keys=keys)
            except (KeyError, ValueError) as e:
                if prefix == "samples":
                    raise
                log.warning("sample index %s unreadable (%s: %s); reading samples/ instead. `distillkit validate "
                            "--deep` names the damage, `distillkit cache --repair` rewrites the index", prefix,
                            type(e).__name__, e)
                prefix = "samples"
                yield start, sample_index.read_columns(group, prefix, stop, start, keys=keys)

    def usable_bits(self, split: Split) -> np.ndarray:
        """Valid rows of `split` ("all": every valid row) as bits (`rowbits`): N/8 bytes per split, the three
        splits made in one pass over the table and kept."""
        if not self._bits:
            parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "all": []}
            for _, t in self.table_chunks():
                for a in range(0, len(t["valid"]), rowbits.STEP):  # small temporaries (glibc keeps large ones)
                    valid, held_out = t["valid"][a:a + rowbits.STEP] != 0, t["split"][a:a + rowbits.STEP]
                    parts["all"].append(np.packbits(valid))
                    parts["train"].append(np.packbits(valid & (held_out == 0)))
                    parts["val"].append(np.packbits(valid & (held_out == 1)))
            self._bits = {k: np.concatenate(v) if v else np.zeros(0, np.uint8) for k, v in parts.items()}
        return self._bits[split]

    def ids_at(self, rows) -> list[str]:
        """The ids of the given rows, read shard by shard (samples/id)."""
        out: dict[int, str] = {}
        size = self.manifest.shard_size
        rows = np.asarray(rows, np.int64)
        for s in np.unique(rows // size).tolist():
            ids = self.read("samples/id", s * size, min((s + 1) * size, self.n))
            out.update({r: str(ids[r - s * size]) for r in rows[rows // size == s].tolist()})
        return [out[r] for r in rows.tolist()]

    # the whole table at once: for tools and benches; O(N) memory, never used by training
    @functools.cached_property
    def _table(self) -> dict[str, Any]:
        parts = list(self.table_chunks(ids=True))
        cat = {k: np.concatenate([t[k] for _, t in parts]) if parts else np.zeros(0) for k in ("valid", "split")}
        ids = SampleIds.of(np.concatenate([t["id"] for _, t in parts]) if parts else [])
        return {"ids": ids, "valid": cat["valid"].astype(bool), "split": cat["split"]}

    @property
    def ids(self) -> SampleIds:
        return self._table["ids"]

    @property
    def valid(self) -> np.ndarray:
        return self._table["valid"]

    @property
    def split(self) -> np.ndarray:
        return self._table["split"]

    def array_names(self, with_image: bool) -> list[str]:
        names = [paths.target(t, k) for t in self.teachers for k in ("patch", "cls")]
        return (["samples/image"] if with_image else []) + names

    def stats(self, teacher: str) -> dict[str, np.ndarray]:
        g = open_group(self.url, "r", self.storage_options)
        prefix = "coef_" if self.decode == "coeffs" else ""
        return {k: g[paths.stats(teacher, prefix + k)][:] for k in ("patch_mean", "patch_std", "cls_mean", "cls_std")}

    def _open(self) -> dict[str, Any]:
        """This process's array handles (a worker opens the store anew; the block loader's threads share one)."""
        if self._arrays is None or self._pid != os.getpid():
            with self._lock:
                if self._arrays is None or self._pid != os.getpid():
                    self._adopt(open_group(self.url, "r", self.storage_options))
        return self._arrays

    def _adopt(self, g) -> None:
        arrays = {n: g[n] for n in ["samples/id", *self.array_names(True)]}
        shard = self.manifest.shard_size
        direct = {n: direct_reader(a, self.verify, missing_ok=False) for n, a in arrays.items()}
        self._direct = {n: d if d is not None and d.rows_per_shard == shard else None for n, d in direct.items()}
        self._arrays, self._pid = arrays, os.getpid()

    def read(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop); a whole shard goes through the direct reader when the layout allows (then possibly a
        read-only view of the mapped shard file: copy before writing into it)."""
        arr = self._open()[name]
        direct = self._direct.get(name)
        shard = self.manifest.shard_size
        try:
            if direct is not None and start % shard == 0 and stop == min(start + shard, self.n):
                raw = direct.read_shard(start // shard)[: stop - start]  # the array may have grown since
            else:
                raw = arr[start:stop]
            return raw if self.on_device else self._decoded(name, raw)
        except ValueError as e:  # zarr's crc32c mismatch does not say where: never train on damaged bytes
            raise ValueError(f"store {self.url}: {name} shard {start // shard} (rows {start}-{stop - 1}) is "
                             f"damaged: {e}. Run `distillkit validate --deep {self.url}` to locate it and "
                             "`distillkit cache --repair` to recompute it") from e

    def read_targets(self, name: str, start: int, stop: int) -> np.ndarray:
        """Like `read`, always decoded on the CPU (statistics, plots)."""
        raw = self.read(name, start, stop)
        return self._decoded(name, raw) if self.on_device else raw

    def _decoded(self, name: str, raw: np.ndarray) -> np.ndarray:
        prefix, *rest = name.split("/")
        if prefix != "teachers":
            return raw
        teacher, token = rest
        return self.codecs[teacher].decode(raw, token, self.decode, self.provenance[teacher].dtype)

    def __getstate__(self) -> dict:
        state = {**self.__dict__, "_arrays": None, "_direct": None, "_pid": None}
        state.pop("_lock", None)
        state.pop("_table", None)  # a tool's whole-table copy never travels to a loader worker
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


class MemmapSource(StoreSource):
    """The same arrays from raw `.npy` files (memory-mapped): the baseline of `distillkit bench loader`."""

    def __init__(self, like: StoreSource, folder: str):
        self.__setstate__(like.__getstate__())
        self.folder = folder
        self.like = like  # the ids (not features: not part of the comparison) still come from the store

    def _open(self) -> dict[str, Any]:
        if self._arrays is None or self._pid != os.getpid():
            self._arrays = {n: np.load(os.path.join(self.folder, n.replace("/", "__") + ".npy"), mmap_mode="r")
                            for n in self.array_names(True)}
            self._pid = os.getpid()
        return self._arrays

    def read(self, name: str, start: int, stop: int) -> np.ndarray:
        if name == "samples/id":
            return self.like.read(name, start, stop)
        return np.array(self._open()[name][start:stop])

