"""The finish of a teacher batch, on the device that computed it: the cast to the stored dtype, the per-image
statistics partials (which bring the finite check with them), then one copy into host memory.

On a GPU the host side is pinned memory (one non-blocking copy); on the CPU the cast writes straight into the
shard's array, so the features are touched once more, for the statistics, and never copied again.
"""

from __future__ import annotations

import numpy as np
import torch

from distillkit.store import stats


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


class HostBuffers:
    """Reusable host arrays for shards in flight (pinned on CUDA: allocating pinned memory per batch costs more
    than the copy). A buffer comes back once its shard is written; the pool holds at most what is in flight."""

    def __init__(self, pinned: bool):
        self._pinned = pinned
        self._free: dict[tuple, list[np.ndarray]] = {}
        import threading

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
