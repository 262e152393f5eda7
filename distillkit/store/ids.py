"""Sample ids held compactly: one utf-8 buffer and row offsets, decoded on access.

A reader process needs every id of a store (batches carry them), 20.7 M of them for DUNE's cache. As Python strings
that is ~75 bytes per id in every process, pickled again into every loader worker at every epoch; here it is the
id's bytes plus an 8-byte offset, and pickling copies two numpy buffers.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

ROWS_AT_ONCE = 1 << 16  # rows turned into Python objects or fixed-width temporaries at once: bounds them
STR = np.dtypes.StringDType()  # numpy's variable-width strings: what zarr reads and writes for str arrays


def row_blocks(n: int) -> Iterator[slice]:
    """Consecutive slices of ROWS_AT_ONCE rows covering rows [0, n)."""
    return (slice(a, min(a + ROWS_AT_ONCE, n)) for a in range(0, n, ROWS_AT_ONCE))


def str_column(values) -> np.ndarray:
    """Any sequence of str (a list, a numpy str / object / StringDType array) as a StringDType array: 16 bytes a
    cell plus the characters, where a fixed-width str array pads every cell to the longest."""
    return np.asarray(values, dtype=STR)


def sorted_matches(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows (ia, ib) where two string columns, each without repeats, hold the same value. One stable sort of
    both together (a's copy lands first, so equal neighbours are an (a, b) pair), not np.searchsorted: numpy's
    searchsorted compares StringDType values longer than 15 bytes wrongly when they live in different arrays."""
    both = np.concatenate([str_column(a), str_column(b)])
    order = np.argsort(both, kind="stable")
    same = both[order[1:]] == both[order[:-1]]
    return order[:-1][same], order[1:][same] - len(a)


class SampleIds:
    """Row i's id is `buf[offsets[i]:offsets[i + 1]]` (utf-8). Indexing with an int gives a str; with a slice, a
    mask or row numbers, another SampleIds."""

    def __init__(self, buf: np.ndarray, offsets: np.ndarray):
        self.buf, self.offsets = buf, offsets

    @classmethod
    def of(cls, values) -> SampleIds:
        """From any array or list of str (zarr gives numpy's StringDType)."""
        values = str_column(values)
        parts, lens = [], []
        for lo in range(0, len(values), ROWS_AT_ONCE):
            enc = np.strings.encode(values[lo:lo + ROWS_AT_ONCE], "utf-8")  # fixed width, NUL-padded
            n = np.strings.str_len(enc)
            width = enc.dtype.itemsize
            grid = enc.view(np.uint8).reshape(len(enc), width) if width else np.zeros((len(enc), 0), np.uint8)
            parts.append(grid[np.arange(width) < n[:, None]])
            lens.append(n)
        lens_all = np.concatenate(lens) if lens else np.zeros(0, np.int64)
        offsets = np.zeros(len(lens_all) + 1, np.int64)
        np.cumsum(lens_all, out=offsets[1:])
        return cls(np.concatenate(parts) if parts else np.zeros(0, np.uint8), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def nbytes(self) -> int:
        return self.buf.nbytes + self.offsets.nbytes

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            i = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"sample row {key} out of range for {len(self)} ids")
            return self.buf[self.offsets[i]:self.offsets[i + 1]].tobytes().decode()
        rows = np.arange(len(self))[key]  # slices, masks and row numbers alike
        starts, lens = self.offsets[rows], self.offsets[rows + 1] - self.offsets[rows]
        offsets = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(lens, out=offsets[1:])
        at = np.repeat(starts - offsets[:-1], lens) + np.arange(offsets[-1])
        return SampleIds(self.buf[at], offsets)

    def strings(self, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Rows [lo, hi) as a numpy StringDType array."""
        hi = len(self) if hi is None else hi
        lens = np.diff(self.offsets[lo:hi + 1])
        width = int(lens.max()) if len(lens) else 0
        grid = np.zeros((len(lens), max(width, 1)), np.uint8)
        grid[np.arange(grid.shape[1]) < lens[:, None]] = self.buf[self.offsets[lo]:self.offsets[hi]]
        fixed = grid.view(f"S{grid.shape[1]}").ravel()
        return np.strings.decode(fixed, "utf-8").astype(np.dtypes.StringDType())

    def __iter__(self) -> Iterator[str]:
        for lo in range(0, len(self), ROWS_AT_ONCE):
            yield from self.strings(lo, min(lo + ROWS_AT_ONCE, len(self))).tolist()

    def tolist(self) -> list[str]:
        return list(self)

    def differs(self, other: SampleIds) -> np.ndarray:
        """Rows whose ids differ (all rows past the shorter table count as differing)."""
        n = min(len(self), len(other))
        if len(self) == len(other) and np.array_equal(self.offsets, other.offsets) and \
                np.array_equal(self.buf, other.buf):
            return np.zeros(0, np.int64)
        out = [lo + np.flatnonzero(self.strings(lo, min(lo + ROWS_AT_ONCE, n)) != other.strings(lo, min(lo + ROWS_AT_ONCE, n)))
               for lo in range(0, n, ROWS_AT_ONCE)]
        return np.concatenate([*out, np.arange(n, max(len(self), len(other)))]).astype(np.int64)

    def __repr__(self) -> str:
        return f"SampleIds({len(self)} ids, {self.nbytes} bytes)"
