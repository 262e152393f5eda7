"""The staged caching run over a list of shards:

  decode workers -> [bounded queue] -> teachers + finish on their device -> [bounded queue] -> shard writers

Each stage works on its own thread(s), so the stages overlap and the slowest one sets the pace (the progress bar
and the result name it). A failure or Ctrl-C anywhere stops every stage; shards already handed to the writers are
finished, so every completed shard is intact and a re-run continues after them.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm.auto import tqdm

from distillkit.features.clock import StageClock
from distillkit.features.finish import HostBuffers
from distillkit.features.forward import forward_shard
from distillkit.features.inputs import SharedDecodes, decode_sample, prefetched
from distillkit.store.writer import ShardResult, ShardWriterPool

log = logging.getLogger("distillkit")

WRITERS = max(2, min(4, (os.cpu_count() or 2) // 4))  # whole-shard writers: zarr calls and crc32c in parallel
DECODED_DEPTH = 2  # decoded shards waiting for the teachers


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


def cache_shards(cfg, prepared, shards: list[int] | None = None, on_shard=None, show_progress: bool = True) -> dict:
    """Compute and write the given shards (default: all pending) through the staged pipeline."""
    shards = prepared.pending if shards is None else shards
    m, teachers, group = prepared.manifest, prepared.teachers, prepared.group
    teacher_hws = {tuple(t.input_hw) for t in teachers.values()}
    uris, ids, seeds = group["samples/uri"][:], group["samples/id"][:], group["samples/view_seed"][:]
    h, w = m.image_hw
    written = {"shards": 0, "samples": 0, "rejected": []}
    t0 = time.perf_counter()
    clock = StageClock()
    clock.stage("decode", max(cfg.num_workers, 1))
    clock.stage("teachers")
    clock.stage("finish")
    cuda = any(t.device.type == "cuda" for t in teachers.values())
    buffers = HostBuffers(pinned=cuda)

    def rows_of(s: int) -> range:
        return range(s * m.shard_size, min((s + 1) * m.shard_size, m.n_samples))

    loader = SharedDecodes(cfg.storage_options) if m.views > 1 else None  # K views: decode each image once

    def decode(r: int):
        t = time.perf_counter()
        try:
            return decode_sample(str(uris[r]), (h, w), teacher_hws, cfg.storage_options, m.view_mode, int(seeds[r]),
                                 loader)
        finally:
            clock.add("decode", time.perf_counter() - t)

    def on_written(res: ShardResult) -> None:
        for t in res.teachers.values():
            if t.decoded is None:  # the finish's own buffers (an encoding codec made new arrays)
                buffers.put(t.patch)
                buffers.put(t.cls)
        written["shards"] += 1
        if on_shard:
            on_shard(written["shards"], len(shards))

    stop = threading.Event()
    decoded_q: queue.Queue = queue.Queue(maxsize=DECODED_DEPTH)
    pool = ThreadPoolExecutor(max(cfg.num_workers, 1), thread_name_prefix="distillkit-decode")
    feeder = threading.Thread(target=_feed, name="distillkit-feed", daemon=True,
                              args=(pool, decode, shards, rows_of, decoded_q, stop, cfg))
    writer = ShardWriterPool(group, writers=WRITERS, depth=WRITERS, on_written=on_written,
                             busy=lambda s: clock.add("write", s))
    clock.stage("write", writer.writers)
    bar = tqdm(total=sum(len(rows_of(s)) for s in shards), unit="img", desc="caching", disable=not show_progress)
    feeder.start()
    try:
        for _ in shards:
            item = decoded_q.get()
            if isinstance(item, _Failed):
                raise item.error
            s, rows, decoded = item
            writer.submit(_shard_result(s, rows, decoded, teachers, prepared.codecs, cfg.batch_size, clock, buffers,
                                        (h, w), written, ids, uris))
            written["samples"] += len(rows)
            bar.update(len(rows))
            bar.set_postfix(bottleneck=clock.bottleneck(), refresh=False)
    except BaseException:  # an error or Ctrl-C: stop every stage, let the writers finish what they hold
        stop.set()
        raise
    finally:
        stop.set()
        _drain(decoded_q)
        pool.shutdown(wait=True, cancel_futures=True)
        feeder.join()
        bar.close()
        writer.close()
    written["wall_s"] = time.perf_counter() - t0
    written["stages"], written["bottleneck"] = clock.report(), clock.bottleneck()
    return written


def _feed(pool, decode, shards, rows_of, out: queue.Queue, stop: threading.Event, cfg) -> None:
    """Decode every row of the shards in order (a window of jobs in flight) and hand them over a shard at a time."""
    try:
        all_rows = [r for s in shards for r in rows_of(s)]
        stream = prefetched(pool, decode, all_rows, window=max(2 * cfg.batch_size, 4 * cfg.num_workers))
        for s in shards:
            rows = rows_of(s)
            decoded = [next(stream) for _ in rows]
            if not _put(out, (s, rows, decoded), stop):
                return
    except BaseException as e:  # handed to the teacher stage, which raises it
        _put(out, _Failed(e), stop)


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


def _shard_result(s, rows, decoded, teachers, codecs, batch_size, clock, buffers, hw, written, ids, uris):
    n = len(rows)
    valid = np.array([d.ok for d in decoded], dtype=np.uint8)
    errors = [d.error for d in decoded]
    out = forward_shard(teachers, decoded, valid, errors, batch_size, clock, buffers)
    with clock.timing("finish"):
        for name, t in list(out.items()):
            codec = codecs[name]
            if not codec.is_identity:  # int8 / PCA: encoded here, its statistics from what readers decode
                out[name] = codec.encode_shard(t.patch, t.cls, valid.astype(bool), teachers[name].provenance.dtype)
                buffers.put(t.patch)
                buffers.put(t.cls)
        image = np.zeros((n, *hw, 3), np.uint8)
        for i, d in enumerate(decoded):
            if valid[i]:
                image[i] = d.image
            else:
                written["rejected"].append({"id": str(ids[rows[i]]), "uri": str(uris[rows[i]]), "reason": errors[i]})
                log.warning("skipping %s: %s", uris[rows[i]], errors[i])
    return ShardResult(shard=s, start=rows.start, stop=rows.stop, valid=valid, error=errors,
                       source_hw=np.array([d.source_hw for d in decoded], np.int32),
                       view=np.stack([d.view for d in decoded]), image=image, teachers=out)
