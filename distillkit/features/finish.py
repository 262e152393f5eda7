"""The finish of teacher batches, on the device that computed them: the cast to the stored dtype, the per-image
statistics partials (which bring the finite check with them), then one copy into host memory; and the assembly
of a shard's result for the writers.

On a GPU the host side is pinned memory (one non-blocking copy); on the CPU the cast writes straight into the
shard's array, so the features are touched once more, for the statistics, and never copied again.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from distillkit.features.inputs import DecodedSample
from distillkit.store import stats
from distillkit.store.writer import ShardResult, TeacherShard


def finish_batch(patch: torch.Tensor, cls: torch.Tensor, dst_patch: np.ndarray, dst_cls: np.ndarray):
    """patch [b, h, w, C], cls [b, C] (float, on the teacher's device) -> dst_* (host arrays of the stored dtype,
    filled). Returns (patch image partials (mean, M2), cls image partials, finite [b])."""
    if patch.device.type == "cpu":
        torch.from_numpy(dst_patch).copy_(patch)  # cast in one pass, into the shard
        torch.from_numpy(dst_cls).copy_(cls)
        src_patch, src_cls = dst_patch, dst_cls
    else:
        dt = torch.from_numpy(dst_patch[:0]).dtype
        src_patch, src_cls = patch.to(dt), cls.to(dt)
        torch.from_numpy(dst_patch).copy_(src_patch, non_blocking=True)
        torch.from_numpy(dst_cls).copy_(src_cls, non_blocking=True)
    b, c = patch.shape[0], patch.shape[-1]
    pm, pm2, pok = stats.image_partials(src_patch.reshape(b, -1, c))  # on the device: waits for the copies too
    cm, cm2, cok = stats.image_partials(src_cls.reshape(b, 1, c))
    return (pm, pm2), (cm, cm2), pok & cok


class ShardFinish:
    """One shard on its way through the teachers and the finish: its decoded samples, which rows are valid, and the
    host arrays the finished batches land in."""

    def __init__(self, shard: int, rows: range, decoded: list[DecodedSample], teachers: dict, buffers: "HostBuffers",
                 image_hw: tuple[int, int]):
        self.shard, self.rows, self.decoded, self.image_hw = shard, rows, decoded, tuple(image_hw)
        self.image: np.ndarray | None = None  # the teachers' stacked inputs when they are the student's images
        self.valid = np.array([d.ok for d in decoded], dtype=np.uint8)
        self.errors = [d.error for d in decoded]
        n = len(decoded)
        self.dtypes = {name: t.provenance.dtype for name, t in teachers.items()}
        self.out = {name: TeacherShard(
            patch=buffers.get((n, *t.provenance.grid_hw, t.provenance.embed_dim), t.provenance.dtype),
            cls=buffers.get((n, t.provenance.embed_dim), t.provenance.dtype),
            image_stats={tok: (np.zeros((n, t.provenance.embed_dim)), np.zeros((n, t.provenance.embed_dim)))
                         for tok in ("patch", "cls")}) for name, t in teachers.items()}

    def add(self, name: str, batch: np.ndarray, y) -> None:
        """A teacher's output for these rows: cast, checked and summarised into the shard."""
        shard = self.out[name]
        a, b = int(batch[0]), int(batch[-1]) + 1
        contiguous = b - a == len(batch)  # the common case: cast straight into the shard's rows
        dst_p = shard.patch[a:b] if contiguous else np.empty((len(batch), *shard.patch.shape[1:]), shard.patch.dtype)
        dst_c = shard.cls[a:b] if contiguous else np.empty((len(batch), shard.cls.shape[1]), shard.cls.dtype)
        (pm, pm2), (cm, cm2), finite = finish_batch(y.patch, y.stored_cls, dst_p, dst_c)
        if not contiguous:
            shard.patch[batch], shard.cls[batch] = dst_p, dst_c
        for tok, (m, m2) in (("patch", (pm, pm2)), ("cls", (cm, cm2))):
            shard.image_stats[tok][0][batch], shard.image_stats[tok][1][batch] = m, m2
        for r in batch[~finite]:
            self.valid[r], self.errors[r] = 0, (f"teacher {name}: output not finite in {self.dtypes[name]} "
                                                "(NaN/Inf or beyond the dtype's range; try dtype float32)")

    def result(self, codecs: dict, buffers: "HostBuffers") -> ShardResult:
        """The shard as the writers store it. A sample rejected by any teacher is rejected for all (alignment
        stays exact): its rows are NaN; storage codecs other than fp16 encode here (statistics of what readers
        decode come from the writer then)."""
        ok = self.valid.astype(bool)
        out = {}
        for name, t in self.out.items():
            t.patch[~ok], t.cls[~ok] = np.nan, np.nan
            codec = codecs[name]
            if codec.is_identity:
                out[name] = t
            else:
                out[name] = codec.encode_shard(t.patch, t.cls, ok, self.dtypes[name])
                buffers.put(t.patch)
                buffers.put(t.cls)
        image = self.image
        if image is None or not ok.all():  # some rows rejected: the stored images, rejected ones black
            if image is not None:
                buffers.put(image)
            image = buffers.get((len(self.decoded), *self.image_hw, 3), np.uint8)
            for i, d in enumerate(self.decoded):
                image[i] = d.image if ok[i] else 0
        return ShardResult(shard=self.shard, start=self.rows.start, stop=self.rows.stop, valid=self.valid,
                           error=self.errors, source_hw=np.array([d.source_hw for d in self.decoded], np.int32),
                           view=np.stack([d.view for d in self.decoded]), image=image, teachers=out)


class HostBuffers:
    """Reusable host arrays for shards in flight (pinned on CUDA: allocating pinned memory per batch costs more
    than the copy). A buffer comes back once its shard is written; the pool holds at most what is in flight."""

    def __init__(self, pinned: bool):
        self._pinned = pinned
        self._free: dict[tuple, list[np.ndarray]] = {}
        self._lock = threading.Lock()

    def get(self, shape: tuple, dtype) -> np.ndarray:
        key = (tuple(shape), np.dtype(dtype).str)
        with self._lock:
            if self._free.get(key):
                return self._free[key].pop()
        t = torch.empty(shape, dtype=torch.from_numpy(np.empty(0, dtype)).dtype, pin_memory=self._pinned)
        return t.numpy()

    def put(self, arr: np.ndarray) -> None:
        with self._lock:
            self._free.setdefault((arr.shape, arr.dtype.str), []).append(arr)
