"""A source's sample table as columns: ids, uris and file signatures as numpy strings (StringDType).

One `SampleRef` per image costs ~0.3 KB (an object and three str); at DUNE's 20.7 M images that is ~6 GB before any
work. As columns a row costs its characters plus 16 bytes per cell, and sorting, de-duplicating and diffing against
the store run in numpy. Rows arrive as a stream and are packed a block at a time, so at most one block of Python
objects is alive at once.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np

from distillkit.store import ids as store_ids
from distillkit.store.ids import row_blocks, str_column

log = logging.getLogger("distillkit")

SHOWN = 20  # repeated ids named one by one; the rest are counted


@dataclass(frozen=True, slots=True)
class SampleRef:
    """One row of a listing, made on demand (`Listing[k]`, iteration)."""
    id: str
    uri: str
    signature: str = ""  # what the file was when listed (see `images.signature`); "" = unknown (a manifest row)


@dataclass
class Listing:
    ids: np.ndarray  # StringDType; sorted and unique once `sort_unique` ran
    uris: np.ndarray
    signatures: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, k):
        """An int gives a SampleRef; a slice or an index array gives a Listing of those rows."""
        if isinstance(k, (slice, np.ndarray, list)):
            return Listing(self.ids[k], self.uris[k], self.signatures[k])
        return SampleRef(str(self.ids[k]), str(self.uris[k]), str(self.signatures[k]))

    def __iter__(self) -> Iterator[SampleRef]:
        for sl in row_blocks(len(self)):
            yield from map(SampleRef, self.ids[sl].tolist(), self.uris[sl].tolist(), self.signatures[sl].tolist())

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[str, str, str]]) -> Listing:
        """Pack (id, uri, signature) rows from a stream, a block at a time."""
        packed: list[list[np.ndarray]] = [[], [], []]  # per column, its blocks
        block: list[tuple[str, str, str]] = []
        for row in rows:
            block.append(row)
            if len(block) == store_ids.ROWS_AT_ONCE:
                for column, values in zip(packed, zip(*block)):
                    column.append(str_column(values))
                block = []
        for column, values in zip(packed, zip(*block) if block else ((), (), ())):
            column.append(str_column(values))
        joined = []
        for column in packed:  # one column's blocks freed before the next is joined: peak = table + a column
            joined.append(np.concatenate(column))
            column.clear()
        return cls(*joined)

    def fingerprint(self) -> str:
        """sha256 over the table (ids, uris and, where known, file signatures), row by row as
        `id \\0 uri [\\0 signature] \\n`: equal fingerprints let a re-run skip the per-sample comparison."""
        h = hashlib.sha256()
        for sl in row_blocks(len(self)):
            h.update("".join(f"{i}\0{u}\0{s}\n" if s else f"{i}\0{u}\n" for i, u, s in zip(
                self.ids[sl].tolist(), self.uris[sl].tolist(), self.signatures[sl].tolist())).encode())
        return h.hexdigest()

    def sort_unique(self, source: str) -> Listing:
        """Sorts this listing by id in place (code point order, as Python sorts str) and returns it. A repeated id
        (a manifest listing one id twice) keeps its first row; the others are dropped with a warning naming the id
        and both files. Column by column: each unsorted column is freed before the next one is sorted."""
        order = np.argsort(self.ids, kind="stable")  # stable: the first of a run of equal ids is its first row
        self._take(order)
        repeat = np.zeros(len(self), bool)
        repeat[1:] = self.ids[1:] == self.ids[:-1]
        if repeat.any():
            first = np.maximum.accumulate(np.where(repeat, 0, np.arange(len(self))))
            dropped = np.flatnonzero(repeat)
            for k in dropped[:SHOWN].tolist():
                log.warning("source %s: skipping %s: sample id %r appears twice (first: %s)", source,
                            self.uris[k], self.ids[k], self.uris[first[k]])
            if len(dropped) > SHOWN:
                log.warning("source %s: %d more repeated id(s) skipped", source, len(dropped) - SHOWN)
            self._take(np.flatnonzero(~repeat))
        return self

    def _take(self, rows: np.ndarray) -> None:
        for name in ("ids", "uris", "signatures"):
            setattr(self, name, getattr(self, name)[rows])


def per_row(values: np.ndarray, fn: Callable[[str], int], dtype) -> np.ndarray:
    """`fn` of each string of a column, into a numpy array (a block of Python str at a time)."""
    out = np.empty(len(values), dtype)
    for sl in row_blocks(len(values)):
        out[sl] = [fn(v) for v in values[sl].tolist()]
    return out


__all__ = ["Listing", "SampleRef", "per_row"]
