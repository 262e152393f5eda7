"""Exact per-channel statistics: per-shard (count, mean, M2) partials merged in shard order (Chan et al.)."""

from __future__ import annotations

import numpy as np


def partial(x: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """x: [n, C] -> (n, mean[C], M2[C]) in float64."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    if n == 0:
        c = x.shape[-1]
        return 0, np.zeros(c), np.zeros(c)
    mean = x.mean(axis=0)
    m2 = ((x - mean) ** 2).sum(axis=0)
    return n, mean, m2


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
