"""The staged caching run over a list of shards:

  decode workers -> [shards] -> teachers -> [batches] -> finish on their device -> [shards] -> shard writers

Each stage has its own thread(s) and bounded queues between them, so the stages overlap, memory stays bounded and
the slowest stage sets the pace (the progress bar and the result name it). A failure or Ctrl-C anywhere stops every
stage; shards already handed to the writers are finished, so every completed shard is intact and a re-run
continues after them.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from distillkit.features.clock import StageClock
from distillkit.features.finish import HostBuffers, ShardFinish
from distillkit.features.forward import forward_shard
from distillkit.progress import Progress
from distillkit.features.inputs import DecodedSample, SharedDecodes, decode_sample, prefetched
from distillkit.store.writer import ShardResult, ShardWriterPool

log = logging.getLogger("distillkit")

WRITERS = max(2, min(4, (os.cpu_count() or 2) // 4))  # whole-shard writers: crc32c and file writes in parallel
DECODED_DEPTH = 2  # decoded shards waiting for the teachers
FINISH_DEPTH = 4  # teacher batches waiting for the finish
BACKGROUND_NICE = 10  # the niceness of every stage but the teachers


def cache_shards(cfg, prepared, shards: list[int] | None = None, on_shard=None, show_progress: bool = True) -> dict:
    """Compute and write the given shards (default: all pending) through the staged pipeline."""
    shards = prepared.pending if shards is None else shards
    m, teachers, group = prepared.manifest, prepared.teachers, prepared.group
    teacher_hws = {tuple(t.input_hw) for t in teachers.values()}
    # only the rows of the shards to cache (an append: the new ones), not the whole table
    lo = min(shards, default=0) * m.shard_size
    hi = min((max(shards, default=-1) + 1) * m.shard_size, m.n_samples)
    uris, ids, seeds = (_Rows(group[p][lo:hi], lo) for p in ("samples/uri", "samples/id", "samples/view_seed"))
    written = {"shards": 0, "samples": 0, "rejected": []}
    t0 = time.perf_counter()
    clock = StageClock()
    for stage, workers in (("decode", cfg.num_workers), ("teachers", 1), ("finish", 1), ("write", WRITERS)):
        clock.stage(stage, workers)
    buffers = HostBuffers(pinned=any(t.device.type == "cuda" for t in teachers.values()))

    def rows_of(s: int) -> range:
        return range(s * m.shard_size, min((s + 1) * m.shard_size, m.n_samples))

    loader = SharedDecodes(cfg.storage_options) if m.views > 1 else None  # K views: decode each image once

    def decode(r: int):
        if not ids[r]:  # padding between versions: no sample, nothing to report (its error stays "")
            return DecodedSample(False, "", (0, 0), np.full(5, np.nan, np.float32), None, {})
        with clock.timing("decode"):
            return decode_sample(str(uris[r]), tuple(m.image_hw), teacher_hws, cfg.storage_options, m.view_mode,
                                 int(seeds[r]), loader)

    def on_written(res: ShardResult) -> None:
        buffers.put(res.image)
        for t in res.teachers.values():
            if t.decoded is None:  # the finish's own arrays (an encoding codec made new ones)
                buffers.put(t.patch)
                buffers.put(t.cls)
        written["shards"] += 1
        if on_shard:
            on_shard(written["shards"], len(shards))

    unsaid: queue.SimpleQueue = queue.SimpleQueue()

    def rejected(job: ShardFinish) -> None:  # on the finish thread
        for i in (i for i, v in enumerate(job.valid) if not v and job.errors[i]):
            r = job.rows[i]
            written["rejected"].append({"id": str(ids[r]), "uri": str(uris[r]), "reason": job.errors[i]})
            unsaid.put((uris[r], job.errors[i]))

    def say_rejected() -> None:
        """Log rejections from the calling (main) thread: a Prefect flow's log handler needs the run's context,
        which the stage threads lack."""
        while not unsaid.empty():
            log.warning("skipping %s: %s", *unsaid.get())

    stop = threading.Event()
    decoded_q: queue.Queue = queue.Queue(maxsize=DECODED_DEPTH)
    pool = ThreadPoolExecutor(max(cfg.num_workers, 1), thread_name_prefix="distillkit-decode", initializer=background)
    feeder = threading.Thread(target=_feed, name="distillkit-feed", daemon=True,
                              args=(pool, decode, shards, rows_of, decoded_q, stop, cfg))
    writer = ShardWriterPool(group, writers=WRITERS, depth=1, on_written=on_written,
                             busy=lambda s, cpu: clock.add("write", s, cpu), init=background)
    finisher = _Finisher(prepared.codecs, buffers, clock, writer, stop, rejected)
    bar = Progress(sum(len(rows_of(s)) for s in shards), "caching", "img", quiet=not show_progress)
    feeder.start()
    finisher.start()
    try:
        for _ in shards:
            item = _get(decoded_q, stop, finisher)
            s, rows, decoded = item
            job = ShardFinish(s, rows, decoded, teachers, buffers, tuple(m.image_hw))
            forward_shard(teachers, job, cfg.batch_size, clock, buffers, finisher.put)
            written["samples"] += len(rows)
            say_rejected()
            bar.advance(len(rows), note=f"bottleneck {clock.bottleneck()}")
        finisher.put(None)
        finisher.join()
        finisher.check()
    finally:  # normal end, an error or Ctrl-C: stop every stage, let the writers finish the shards they hold
        stop.set()
        _drain(decoded_q)
        pool.shutdown(wait=True, cancel_futures=True)
        feeder.join()
        finisher.join()
        say_rejected()
        bar.close()
        writer.close()
    written["wall_s"] = time.perf_counter() - t0
    written["stages"], written["bottleneck"] = clock.report(), clock.bottleneck()
    return written


class _Finisher(threading.Thread):
    """The finish stage: casts, checks and summarises teacher batches into their shard, hands whole shards to the
    writers. Its own thread, so the teachers keep forwarding meanwhile."""

    def __init__(self, codecs, buffers, clock, writer, stop, rejected):
        super().__init__(name="distillkit-finish", daemon=True)
        self.q: queue.Queue = queue.Queue(maxsize=FINISH_DEPTH)
        self.error: BaseException | None = None
        self._args = codecs, buffers, clock, writer, stop, rejected

    def put(self, *item) -> None:
        while True:
            self.check()
            try:
                self.q.put(item if item != (None,) else None, timeout=0.1)
                return
            except queue.Full:
                continue

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def run(self) -> None:
        codecs, buffers, clock, writer, stop, rejected = self._args
        background()
        # passes over memory: one core does them at full speed; more threads only spin (and double the CPU time)
        torch.set_num_threads(1)
        while True:
            try:
                item = self.q.get(timeout=0.1)
            except queue.Empty:
                if stop.is_set():
                    return
                continue
            if item is None:
                return
            try:
                job, name, batch, y = item
                if name is not None:
                    with clock.timing("finish"):
                        job.add(name, batch, y)
                    continue
                with clock.timing("finish"):
                    result = job.result(codecs, buffers)
                    for arr in batch:  # the shard's inputs: every forward that read them has been finished
                        buffers.put(arr)
                    rejected(job)
                writer.submit(result)
            except BaseException as e:  # raised on the teacher stage's thread
                self.error = e
                stop.set()
                return


def background() -> None:
    """Lower this thread's CPU priority (Linux: per thread): the teachers should be the one busy stage, so the
    work around them takes the cycles they leave (waits, barriers) instead of slowing every forward down. A nice
    level, not SCHED_IDLE: on a node shared with other jobs, idle-class decoders could starve and idle the GPU."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)
    except (AttributeError, OSError):  # not Linux, or not allowed: same results, only less polite
        pass


class _Rows:
    """Rows [lo, lo + len) of a column, indexed by row number."""

    def __init__(self, values, lo: int):
        self._values, self._lo = values, lo

    def __getitem__(self, r: int):
        return self._values[r - self._lo]


def _feed(pool, decode, shards, rows_of, out: queue.Queue, stop: threading.Event, cfg) -> None:
    """Decode every row of the shards in order (a window of jobs in flight) and hand them over a shard at a time."""
    background()
    try:
        all_rows = [r for s in shards for r in rows_of(s)]
        stream = prefetched(pool, decode, all_rows, window=max(2 * cfg.batch_size, 4 * cfg.num_workers))
        for s in shards:
            rows = rows_of(s)
            decoded = [next(stream) for _ in rows]
            if not _put(out, (s, rows, decoded), stop):
                return
    except BaseException as e:  # handed to the teacher stage, which raises it
        _put(out, e, stop)


def _get(q: queue.Queue, stop: threading.Event, finisher: _Finisher):
    while True:
        finisher.check()
        try:
            item = q.get(timeout=0.1)
        except queue.Empty:
            continue
        if isinstance(item, BaseException):
            raise item
        return item


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _drain(q: queue.Queue) -> None:
    while True:
        try:
            q.get_nowait()
        except queue.Empty:
            return
