"""Shard writer: one writer owns a whole shard; data first, completion marker last; writes off the compute thread."""

from __future__ import annotations

import errno
import logging
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr
from zarr.storage import LocalStore

from distillkit_schemas import paths

from distillkit.store import stats as st
from distillkit.store.direct_write import write_rows

log = logging.getLogger("distillkit")


@dataclass
class TeacherShard:
    patch: np.ndarray  # [n, h, w, W] as stored (the storage codec's output); NaN rows for rejected samples
    cls: np.ndarray  # [n, C]
    decoded: np.ndarray | None = None  # [n, h, w, C] what readers decode from `patch` (None: `patch` itself)
    decoded_cls: np.ndarray | None = None  # [n, C] what readers decode from `cls` (None: `cls` itself)
    coef_patch: np.ndarray | None = None  # [n, h, w, K] a projection's coefficients, for their statistics
    coef_cls: np.ndarray | None = None  # [n, K] CLS tokens projected alike
    # per image statistics partials (mean [n, C], M2 [n, C]) of "patch" / "cls" where the finish computed them
    # beside the features (on the device); the others are computed here from the arrays
    image_stats: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


@dataclass
class ShardResult:
    shard: int
    start: int
    stop: int
    valid: np.ndarray  # [n] uint8
    error: list[str]
    source_hw: np.ndarray  # [n, 2] int32
    view: np.ndarray  # [n, 5] float32
    image: np.ndarray  # [n, H, W, 3] uint8
    teachers: dict[str, TeacherShard] = field(default_factory=dict)


def _writable(group: zarr.Group):
    """group[path] with write_empty_chunks on (a runtime setting, not stored): no compare-with-fill per chunk, and
    every chunk is stored, so rejected (NaN) samples and all-fill values are written like any other."""
    return lambda path: group[path].with_config({"write_empty_chunks": True})


def write_shard(group: zarr.Group, r: ShardResult) -> None:
    """Write every array of one shard in single aligned calls, then the statistics, then the marker."""
    sl = slice(r.start, r.stop)
    ok = r.valid.astype(bool)
    marker = begin_shard(group, r.shard)
    w = _GroupView(group)
    rows = {"samples/valid": r.valid, "samples/error": np.array(r.error, dtype=object).astype(str),
            "samples/source_hw": r.source_hw, "samples/view": r.view, "samples/image": r.image}
    for name, t in r.teachers.items():
        rows.update({paths.patch(name): t.patch, paths.cls(name): t.cls})
    for path, values in rows.items():
        arr = w[path]
        if not write_rows(arr, sl.start, sl.stop, values):  # a layout the direct writer does not cover
            arr[sl] = values
    for name, t in r.teachers.items():
        write_partials(w, paths.teacher(name), r.shard, ok, t)
    w["progress/shard_done"][r.shard] = 1  # LAST: the shard counts as done only after all of the above
    end_shard(group, marker)


def write_partials(group, base: str, shard: int, ok: np.ndarray, t: TeacherShard) -> None:
    """One shard's statistics partials, of the values readers get back (decoded), over its valid rows."""
    parts = [("patch", t.patch if t.decoded is None else t.decoded),
             ("cls", t.cls if t.decoded_cls is None else t.decoded_cls)]
    if t.coef_patch is not None:
        parts += [("coef_patch", t.coef_patch), ("coef_cls", t.coef_cls)]
    for tok, x in parts:
        if tok in t.image_stats:
            means, m2s = t.image_stats[tok]
            _, mean, m2 = st.merge_images(int(np.prod(x.shape[1:-1])), means, m2s, np.flatnonzero(ok))
        else:
            _, mean, m2 = st.partial(x[ok])
        group[f"{base}/stats/shard_{tok}_mean"][shard] = mean
        group[f"{base}/stats/shard_{tok}_m2"][shard] = m2
    group[f"{base}/stats/shard_count"][shard] = int(ok.sum())


INFLIGHT_SUFFIX = ".inflight"  # beside the store, like its lease: `<store>.inflight/<shard>`


def inflight_dir(group: zarr.Group) -> Path | None:
    """Where a local store's writers record the shards they are writing (None: not a local store)."""
    if not isinstance(group.store, LocalStore):
        return None
    root = Path(group.store.root)
    return root.with_name(root.name + INFLIGHT_SUFFIX)


def begin_shard(group: zarr.Group, shard: int) -> Path | None:
    """Before writing a shard: clean what a killed writer of this shard left, then record that it is in flight.

    The record costs one stat and one create whatever the store's size: a shard's debris is searched for only
    when its record says a writer died while writing it (listing the store's chunk folders for every shard made
    caching O(N²))."""
    folder = inflight_dir(group)
    if folder is None:
        return None
    marker = folder / str(shard)
    if marker.exists():
        remove_debris(group, shard)
    folder.mkdir(exist_ok=True)
    marker.touch()
    return marker


def end_shard(group: zarr.Group, marker: Path | None) -> None:
    """After the shard's completion mark: nothing of it is in flight any more."""
    if marker is not None:
        marker.unlink(missing_ok=True)


def drop_inflight_dir(group: zarr.Group) -> None:
    """Once every shard is done (finalize): the empty record folder goes (left if a record is still there)."""
    folder = inflight_dir(group)
    if folder is not None:
        try:
            folder.rmdir()
        except OSError:
            pass


def remove_debris(group: zarr.Group, shard: int) -> int:
    """Delete temp files (`*.partial`) a killed writer left in this shard's chunk paths (local stores); returns
    how many. Only called for a shard recorded in flight (begin_shard): it lists every array's `c/` folder.

    LocalStore writes through temp file + rename, so a SIGKILL can leave one behind. Only this shard's own chunk
    paths are touched: a writer owns its shard, so no other process can be writing there.
    """
    if not isinstance(group.store, LocalStore):
        return 0
    removed = 0
    for array_dir in _chunk_dirs(Path(group.store.root)):
        for debris in list(array_dir.glob(f"{shard}.*.partial")) + list(array_dir.glob(f"{shard}/**/*.partial")):
            debris.unlink(missing_ok=True)
            removed += 1
    return removed


def remove_metadata_debris(group: zarr.Group) -> int:
    """Delete the temp files (`zarr.*.partial`) of metadata writes a killed run left (growing an array rewrites
    its zarr.json). Only a run holding the store's lease may call this: nobody else writes metadata meanwhile."""
    if not isinstance(group.store, LocalStore):
        return 0
    removed = 0
    for node in _metadata_dirs(Path(group.store.root)):
        for debris in node.glob("zarr.*.partial"):
            debris.unlink(missing_ok=True)
            removed += 1
    return removed


def _metadata_dirs(root: Path) -> list[Path]:
    """Every group and array folder, found by walking the metadata tree only (never the chunk folders)."""
    out, todo = [], [root]
    while todo:
        node = todo.pop()
        out.append(node)
        todo.extend(c for c in node.iterdir() if c.name != "c" and c.is_dir() and (c / "zarr.json").exists())
    return out


def _chunk_dirs(root: Path) -> list[Path]:
    """The `c/` folder of every array."""
    return [node / "c" for node in _metadata_dirs(root) if (node / "c").is_dir()]


class _GroupView:
    def __init__(self, group: zarr.Group):
        self._get = _writable(group)

    def __getitem__(self, path: str):
        return self._get(path)


class StoreFull(RuntimeError):
    """The store's device ran out of space; completed shards are intact and a re-run continues."""


class ShardWriterPool:
    """Writes shards on background threads, each writer owning whole shards (data, statistics, then the marker), so
    writing never serialises a run. At most `depth` shards wait. The first failure stops the writers: the shards
    already written stay complete and valid, and the failure is raised on the caller's thread."""

    def __init__(self, group: zarr.Group, writers: int = 2, depth: int = 2, on_written=None, busy=None, init=None):
        self._group = group
        self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._error: BaseException | None = None
        self._failed = -1  # the shard whose write failed
        self._on_written = on_written
        self._busy = busy  # optional callable(seconds, cpu seconds): time spent writing, for the stage report
        self._init = init  # optional callable run first on each writer thread (e.g. its CPU priority)
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, name=f"distillkit-writer-{i}", daemon=True)
                         for i in range(max(writers, 1))]
        for th in self._threads:
            th.start()

    @property
    def writers(self) -> int:
        return len(self._threads)

    def _run(self) -> None:
        import time

        if self._init:
            self._init()
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                continue  # drain: nothing more is written after a failure
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                write_shard(self._group, item)
            except BaseException as e:  # re-raised on the caller's thread
                with self._lock:
                    if self._error is None:
                        self._error, self._failed = e, item.shard
                continue
            finally:
                if self._busy:
                    self._busy(time.perf_counter() - t0, time.thread_time() - c0)
            if self._on_written:
                try:
                    with self._lock:
                        self._on_written(item)
                except Exception as e:  # progress reporting must never fail a written shard
                    log.warning("progress callback failed after shard %d: %s", item.shard, e)

    def _raise(self) -> None:
        e = self._error
        if e is None:
            return
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StoreFull(f"no space left on the store's device while writing shard {self._failed}: every shard "
                            "written before it is complete and valid. Free space (or move the store) and run the "
                            "same command again: it continues where this run stopped.") from e
        raise RuntimeError(f"writing shard {self._failed} failed: {e}") from e

    def submit(self, result: ShardResult) -> None:
        self._raise()
        self._queue.put(result)

    def close(self) -> None:
        """Wait for every submitted shard (or, after a failure, for the writers to stop), then raise a failure."""
        for _ in self._threads:
            self._queue.put(None)
        for th in self._threads:
            th.join()
        self._raise()


