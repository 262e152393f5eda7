"""Per-sample flags held as bits (`np.packbits`, 8 rows a byte, row 8k in byte k's high bit).

A reader needs to know which rows it may serve (valid, in its split): as one bit each that is 2.6 MB for DUNE's
20.7 M samples, where a bool per row is 21 MB and the sample table it comes from ~600 MB. Everything here works a
bounded range of rows at a time, so no per-row array of the whole store is ever made.
"""

from __future__ import annotations

import math

import numpy as np

STEP = 1 << 16  # rows unpacked at once (a multiple of 8): bounds every temporary (a few hundred KB)


def rows(bits: np.ndarray, start: int, stop: int) -> np.ndarray:
    """The flags of rows [start, stop) as bools."""
    lo, hi = start >> 3, (stop + 7) >> 3
    return np.unpackbits(bits[lo:hi])[start - 8 * lo:stop - 8 * lo].view(bool)


def per_shard(bits: np.ndarray, n: int, shard_size: int) -> np.ndarray:
    """Set flags per shard of `shard_size` rows (the last shard may be short)."""
    out = np.zeros(math.ceil(n / shard_size), np.int64)
    step = 8 * shard_size * max(1, STEP // (8 * shard_size))  # ~STEP rows: whole shards and whole bytes
    for a in range(0, n, step):
        b = min(a + step, n)
        out[a // shard_size:math.ceil(b / shard_size)] = np.add.reduceat(
            rows(bits, a, b).astype(np.int32), np.arange(0, b - a, shard_size))
    return out


def first(bits: np.ndarray, n: int, k: int) -> np.ndarray:
    """Row numbers of the first k set flags (fewer if fewer are set)."""
    out: list[np.ndarray] = []
    taken = 0
    for a in range(0, n, STEP):
        found = np.flatnonzero(rows(bits, a, min(a + STEP, n)))[:k - taken] + a
        out.append(found)
        taken += len(found)
        if taken >= k:
            break
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def keep_first(bits: np.ndarray, n: int, k: int) -> np.ndarray:
    """A copy with only the first k set flags kept."""
    out = bits.copy()
    chosen = first(bits, n, k + 1)
    if len(chosen) > k:  # clear from the (k+1)-th set row on
        p = int(chosen[k])
        out[p >> 3] &= np.uint8((0xFF << (8 - (p & 7))) & 0xFF)
        out[(p >> 3) + 1:] = 0
    return out
