"""Exact per-channel statistics: per-shard (count, mean, M2) partials merged in shard order (Chan et al.).

A shard's partial is built from per-image partials, merged in row order:
* per image, float32 sums of (x - k) and (x - k)^2 over its tokens, k the image's first token (the shift keeps the
  variance free of cancellation: channels whose mean is far from zero lose nothing), on numpy arrays or torch
  tensors (so a GPU computes them where the features are). float32 sums of float16 values cannot overflow, so a
  non-finite sum means a non-finite value: the finite check comes with the sums;
* across images and shards, float64 (Chan's merge) in a fixed order.
Every step has a fixed order (numpy and torch reduce the token axis of a [n, T, C] array per output element, serially,
whatever the thread count), so the same features give the same bytes on every run of one kind of device.
"""

from __future__ import annotations

import threading

import numpy as np

_CHUNK = 8  # images per float32 scratch block (bounded memory, no page-faulting temporaries per shard)
_LOCAL = threading.local()


def image_partials(x) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x: [n, T, C] (numpy or torch, any float dtype) -> per image (mean [n, C], M2 [n, C], all finite [n]); mean
    and M2 in float64, from the shifted float32 sums. Rows with a non-finite value get NaN mean/M2."""
    if not isinstance(x, np.ndarray) and x.device.type != "cpu":  # a torch tensor on an accelerator: reduce there
        d = x.float() - x[:, :1].float()
        s1, s2 = d.sum(1), d.square_().sum(1)
        k, s1, s2 = x[:, 0].double().cpu().numpy(), s1.double().cpu().numpy(), s2.double().cpu().numpy()
    else:
        x = np.asarray(x)  # a CPU tensor: its numpy view
        k, s1, s2 = _shifted_sums(x)
    t = x.shape[1]
    finite = np.isfinite(s1).all(-1) & np.isfinite(s2).all(-1)
    if finite.all():
        return k + s1 / t, s2 - s1 * s1 / t, finite
    if "float32" in str(x.dtype):  # float32 sums of float32 values may overflow: confirm a non-finite sum exactly
        for i in np.flatnonzero(~finite):
            finite[i] = bool(np.isfinite(np.asarray(x[i].cpu() if hasattr(x, "cpu") else x[i])).all())
    with np.errstate(invalid="ignore"):  # inf - inf in a rejected row: NaN, as meant
        return k + s1 / t, s2 - s1 * s1 / t, finite


def _shifted_sums(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n, t, c = x.shape
    k = x[:, 0].astype(np.float64)
    s1, s2 = np.empty((n, c), np.float64), np.empty((n, c), np.float64)
    scratch = _scratch((min(n, _CHUNK), t, c))
    x = np.ascontiguousarray(x)
    for a in range(0, n, _CHUNK):
        b = min(a + _CHUNK, n)
        d = scratch[:b - a]
        _cast_shifted(x[a:b], d)
        # float32, reduced over the token axis in one order for every output element (numpy: serial, no threads;
        # the same bits whatever the buffers' alignment, tested): einsum squares and sums in one pass
        s1[a:b] = d.sum(1)
        s2[a:b] = np.einsum("ntc,ntc->nc", d, d)
    return k, s1, s2


def _scratch(shape: tuple[int, int, int]) -> np.ndarray:
    """A float32 block kept per thread: a fresh one per call would be page-faulted in (and zeroed) every time."""
    size = int(np.prod(shape))
    buf = getattr(_LOCAL, "buf", None)
    if buf is None or buf.size < size:
        buf = _LOCAL.buf = np.empty(size, np.float32)
    return buf[:size].reshape(shape)


def _cast_shifted(x: np.ndarray, out: np.ndarray) -> None:
    """out = float32(x) - float32(x[:, :1]): torch's vectorised half->float cast where torch is installed (numpy
    casts float16 element by element, several times slower); elementwise, so exact either way."""
    try:
        import torch
    except ImportError:  # the store's readers need no torch
        np.subtract(x, x[:, :1], out=out, dtype=np.float32)
        return
    d = torch.from_numpy(out).copy_(torch.from_numpy(x))
    d.sub_(d[:, :1].clone())


def merge_images(tokens: int, means: np.ndarray, m2s: np.ndarray, rows: np.ndarray) -> tuple[int, np.ndarray,
                                                                                             np.ndarray]:
    """The partial of the given image rows (in row order), each of `tokens` tokens."""
    return merge([(tokens, means[r], m2s[r]) for r in rows] or [(0, np.zeros(means.shape[-1]), None)])


def partial(x: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """x: [n, T, C] or [n, C] (one token per image) -> (n*T, mean[C], M2[C]) in float64 over every row."""
    x = np.asarray(x)
    x3 = x.reshape(x.shape[0], -1, x.shape[-1]) if x.ndim != 2 else x[:, None, :]
    if x3.shape[0] == 0 or x3.shape[1] == 0:
        return 0, np.zeros(x.shape[-1]), np.zeros(x.shape[-1])
    means, m2s, _ = image_partials(x3)
    return merge_images(x3.shape[1], means, m2s, np.arange(x3.shape[0]))


def merge(parts: list[tuple[int, np.ndarray, np.ndarray]]) -> tuple[int, np.ndarray, np.ndarray]:
    """Merge partials in the given order (the order is fixed, so the result is bit-reproducible)."""
    n, mean, m2 = 0, None, None
    for nb, mb, m2b in parts:
        if nb == 0:
            continue
        if n == 0:
            n, mean, m2 = nb, mb.copy(), m2b.copy()
            continue
        tot = n + nb
        delta = mb - mean
        mean = mean + delta * (nb / tot)
        m2 = m2 + m2b + delta**2 * (n * nb / tot)
        n = tot
    if mean is None:
        c = parts[0][1].shape[0] if parts else 0
        return 0, np.zeros(c), np.zeros(c)
    return n, mean, m2


def std_from(n: int, m2: np.ndarray) -> np.ndarray:
    return np.sqrt(m2 / max(n, 1))
