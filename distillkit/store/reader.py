"""Streaming reader: shard-aware shuffling, worker/rank split, teachers zipped by sample id, exact resume.

Order of an epoch (pure index arithmetic, no data read):
  1. shards are permuted with a seed derived from (seed, epoch);
  2. rank r of `world` takes every world-th shard of that permutation (disjoint across ranks);
  3. a rank's shards are cut into blocks of `shuffle_shards` shards; logical worker w of W takes every W-th block;
  4. the usable rows (valid, wanted split) of a block are permuted; a worker's rows are its blocks' rows in order;
  5. each worker cuts its rows into batches; the DataLoader interleaves workers round-robin.
Data is read a whole shard per call (one request per shard and array), a block at a time, the next block
prefetched on a thread, so zarr's per-call overhead is paid once per shard rather than once per sample.

Memory does not grow with the store beyond one bit per sample (which rows are usable: `rowbits`) and a few numbers
per shard: the sample table is streamed a chunk at a time, ids come with each shard's data, and a block's row order
is made when the block is reached (DUNE's 20.7 M samples: ~2.6 MB of bits, ~8 MB of shard numbers and counts).

Resume: position = batches consumed in the epoch. The per-worker counts and the worker whose turn is next follow
from the round-robin (arithmetic on the workers' batch counts); on resume each worker skips its consumed batches and
the worker roles are rotated so that the DataLoader's first request lands on the worker whose turn it was. The
continued sequence equals the uninterrupted one.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from distillkit.store import rowbits
from distillkit.store.source import MemmapSource, Split, StoreSource

__all__ = ["MemmapSource", "ShardStream", "Split", "StoreSource", "make_loader", "worker_context", "zip_sources"]


def zip_sources(sources: list[StoreSource], split: Split) -> np.ndarray:
    """Check that every store has the same sample table (ids compared a chunk at a time); return the rows usable
    in all of them (valid, in `split`) as bits."""
    first = sources[0]
    seen: dict[str, str] = {}
    for s in sources:
        if s.manifest.shard_size != first.manifest.shard_size or s.n != first.n:
            raise ValueError(f"stores {first.url} and {s.url} have different sample tables or shard sizes")
        for t in s.teachers:
            if t in seen:
                raise ValueError(f"teacher {t!r} appears in both {seen[t]} and {s.url}; select one with teachers=")
            seen[t] = s.url
    for s in sources[1:]:
        if s.url in first.aligned:  # a train and a held-out stream over the same stores: compared once
            continue
        for (start, a), (_, b) in zip(first.table_chunks(ids=True), s.table_chunks(ids=True)):
            mismatch = np.flatnonzero(a["id"] != b["id"])
            if mismatch.size:
                i = int(mismatch[0])
                raise ValueError(f"stores {first.url} and {s.url} are not aligned: sample {start + i} is "
                                 f"{str(a['id'][i])!r} in one and {str(b['id'][i])!r} in the other "
                                 f"({mismatch.size} rows differ in rows {start}-{start + len(a['id']) - 1})")
        first.aligned.add(s.url)
    bits = first.usable_bits(split)
    for s in sources[1:]:
        bits = bits & s.usable_bits(split)
    return bits


class ShardStream(IterableDataset):
    """Yields whole batches (dicts of tensors). Use with DataLoader(batch_size=None).

    What it holds per sample is one bit (usable or not); ids travel with the data, read per shard."""

    def __init__(self, sources: list[StoreSource], batch_size: int, split: Split = "train", seed: int = 0,
                 shuffle: bool = True, shuffle_shards: int = 2, rank: int | None = None, world: int | None = None,
                 with_image: bool = True, max_samples: int | None = None):
        self.sources = sources
        self.n = sources[0].n
        self.usable = zip_sources(sources, split)  # bits (rowbits)
        if max_samples is not None:
            self.usable = rowbits.keep_first(self.usable, self.n, max_samples)
        self.batch_size = batch_size
        self.seed, self.shuffle, self.shuffle_shards = seed, shuffle, shuffle_shards
        if rank is None or world is None:
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
            else:
                rank, world = 0, 1
        self.rank, self.world = rank, world
        self.with_image = with_image
        self.shard_size = sources[0].manifest.shard_size
        self.n_shards = math.ceil(self.n / self.shard_size)
        # usable rows per shard: planning works on shards (O(N/S)); a shard without one is never read
        self.shard_rows = rowbits.per_shard(self.usable, self.n, self.shard_size)
        self.epoch = 0
        self.start_batch = 0
        self.num_workers = 1  # set by make_loader; the plan depends on it
        self._plans: dict[tuple, Any] = {}  # per-epoch planning, asked for several times before the first step

    @property
    def n_usable(self) -> int:
        return int(self.shard_rows.sum())

    # ---- planning (cheap, deterministic) -------------------------------------------------------------------
    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _cached(self, key: tuple, make):
        if key not in self._plans:
            if len(self._plans) >= 8:  # a few epochs x worker counts; planning is cheap to redo beyond that
                self._plans.pop(next(iter(self._plans)))
            self._plans[key] = make()
        return self._plans[key]

    def _blocks(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(this rank's shards with a usable row, in epoch order; usable rows per block of `shuffle_shards` of them).
        Block b is shards[b*k:(b+1)*k] (also in order: evaluation then holds one block of shards at a time)."""
        def make():
            rng = np.random.default_rng([self.seed, epoch])
            shards = rng.permutation(self.n_shards) if self.shuffle else np.arange(self.n_shards)
            mine = shards[self.rank::self.world]
            mine = mine[self.shard_rows[mine] > 0]
            counts = np.add.reduceat(self.shard_rows[mine], np.arange(0, len(mine), self.shuffle_shards)) \
                if len(mine) else np.zeros(0, np.int64)
            return mine, counts
        return self._cached(("blocks", epoch), make)

    def _block(self, epoch: int, b: int) -> np.ndarray:
        mine, _ = self._blocks(epoch)
        return mine[b * self.shuffle_shards:(b + 1) * self.shuffle_shards]

    def _block_rows(self, epoch: int, block_id: int, shards: np.ndarray) -> np.ndarray:
        """The usable rows of a block, in their epoch order: made when the block is reached, never for a whole
        epoch at once."""
        rows = np.concatenate([s * self.shard_size + np.flatnonzero(self._shard_usable(s)) for s in shards.tolist()]
                              ) if len(shards) else np.zeros(0, np.int64)
        if self.shuffle:
            rows = np.random.default_rng([self.seed, epoch, self.rank, block_id]).permutation(rows)
        return rows

    def _shard_usable(self, s: int) -> np.ndarray:
        return rowbits.rows(self.usable, s * self.shard_size, min((s + 1) * self.shard_size, self.n))

    def worker_batch_counts(self, epoch: int, num_workers: int) -> list[int]:
        """Batches of each logical worker, from per-block row counts alone (no row lists are built)."""
        _, per_block = self._blocks(epoch)
        return [math.ceil(int(per_block[w::num_workers].sum()) / self.batch_size) for w in range(num_workers)]

    def batches_per_epoch(self, epoch: int = 0) -> int:
        return sum(self.worker_batch_counts(epoch, self.num_workers))

    def position(self, epoch: int, num_workers: int, start_batch: int) -> tuple[list[int], int]:
        """After `start_batch` batches of the DataLoader's round-robin over the workers (each in turn while it has
        batches left): (batches each worker has produced, the worker whose turn is next). Arithmetic over the
        workers' counts, O(workers), not a list of the epoch's batches."""
        counts = self.worker_batch_counts(epoch, num_workers)
        done, left, turn = [0] * num_workers, start_batch, 0
        while True:
            active = [w for w in range(num_workers) if counts[w] > turn]
            if not active:
                return done, 0
            rounds = min(min(counts[w] for w in active) - turn, left // len(active))  # whole rounds at this level
            for w in active:
                done[w] += rounds
            left -= rounds * len(active)
            turn += rounds
            if left < len(active) and turn < min(counts[w] for w in active):
                for w in active[:left]:
                    done[w] += 1
                return done, active[left]

    def __getstate__(self) -> dict:
        # workers plan their own share: never ship the main process's cached plans to them
        return {**self.__dict__, "_plans": {}}

    # ---- iteration ------------------------------------------------------------------------------------------
    def _load_block(self, shards: list[int]) -> dict[str, dict[int, tuple[np.ndarray | None, np.ndarray]]]:
        """Whole shards of every array ({name: {shard: (kept rows or None, data)}}), one call per shard and array.
        Remote stores are read 8 calls at a time (latency-bound); local ones 2 (more threads only contend for the
        GIL and page faults). A shard with few usable rows (held-out samples, `max_samples`) keeps only those, so
        that what a block holds is bounded by the rows it serves, not by the shards they are spread over."""
        jobs = []
        for si, src in enumerate(self.sources):
            for name in (["samples/id"] if si == 0 else []) + src.array_names(self.with_image and si == 0):
                for s in shards:
                    jobs.append((si, name, s))
        threads = 8 if any(src.remote for src in self.sources) else 2
        with ThreadPoolExecutor(min(threads, max(len(jobs), 1))) as pool:
            parts = list(pool.map(lambda j: self.sources[j[0]].read(
                j[1], j[2] * self.shard_size, min((j[2] + 1) * self.shard_size, self.n)), jobs))
        kept = {}
        for s in shards:
            keep = np.flatnonzero(self._shard_usable(s))
            kept[s] = keep if 2 * len(keep) < min(self.shard_size, self.n - s * self.shard_size) else None
        data: dict[str, dict[int, tuple[np.ndarray | None, np.ndarray]]] = {}
        for (_, name, s), arr in zip(jobs, parts):
            keep = kept[s]
            data.setdefault(name, {})[s] = (keep, arr if keep is None else np.take(arr, keep, axis=0))
        return data

    def _batch(self, rows: np.ndarray, blocks: list[dict], worker: int, index: int) -> dict[str, Any]:
        # a batch is a set: in row order each shard's rows form one run, gathered straight into the output
        rows = np.sort(rows)
        out: dict[str, Any] = {"rows": torch.from_numpy(rows), "worker": worker, "index": index}
        shard_of = rows // self.shard_size
        cuts = [0, *(np.flatnonzero(np.diff(shard_of)) + 1).tolist(), len(rows)]
        for name in blocks[0]:
            by_shard = {s: a for block in blocks for s, a in block[name].items()}
            if name == "samples/id":  # strings: a list, not a tensor
                out["ids"] = [str(by_shard[s][1][r - s * self.shard_size if by_shard[s][0] is None else
                                                 np.searchsorted(by_shard[s][0], r - s * self.shard_size)])
                              for r, s in zip(rows.tolist(), shard_of.tolist())]
                continue
            like = by_shard[int(shard_of[0])][1]
            tensor = _batch_tensor((len(rows), *like.shape[1:]), like.dtype)
            res = tensor.numpy()
            for a, b in zip(cuts[:-1], cuts[1:]):
                s = int(shard_of[a])
                keep, arr = by_shard[s]
                local = rows[a:b] - s * self.shard_size
                _gather(arr, local if keep is None else np.searchsorted(keep, local), res[a:b])
            out[name] = tensor
        return out

    def __iter__(self):
        info = get_worker_info()
        physical, num_workers = (info.id, info.num_workers) if info else (0, 1)
        done, rotation = self.position(self.epoch, num_workers, self.start_batch)
        worker = (physical + rotation) % num_workers
        _, per_block = self._blocks(self.epoch)
        mine = range(worker, len(per_block), num_workers)  # this worker's blocks; its rows run through them
        skip, first = done[worker] * self.batch_size, 0
        while first < len(mine) and per_block[mine[first]] <= skip:  # blocks a resume has consumed whole
            skip -= int(per_block[mine[first]])
            first += 1
        index = done[worker]
        rows = owner = np.zeros(0, np.int64)  # rows read but not yet batched, and their block
        loaded: dict[int, Any] = {}
        with ThreadPoolExecutor(1) as prefetcher:
            def load(b: int) -> None:
                if b < len(mine) and b not in loaded:
                    loaded[b] = prefetcher.submit(self._load_block, self._block(self.epoch, mine[b]).tolist())

            for b in range(first, len(mine)):
                block = self._block(self.epoch, mine[b])
                new = self._block_rows(self.epoch, mine[b], block)[skip if b == first else 0:]
                rows, owner = np.concatenate([rows, new]), np.concatenate([owner, np.full(len(new), b)])
                load(b)
                load(b + 1)  # prefetched while this block's batches are made
                while len(rows) >= self.batch_size or (b == len(mine) - 1 and len(rows)):
                    need = sorted(set(owner[:self.batch_size].tolist()))
                    for old in [k for k in loaded if k < need[0]]:
                        del loaded[old]
                    yield self._batch(rows[:self.batch_size], [loaded[k].result() for k in need], worker, index)
                    rows, owner, index = rows[self.batch_size:], owner[self.batch_size:], index + 1


def _batch_tensor(shape: tuple[int, ...], dtype: np.dtype) -> torch.Tensor:
    """An uninitialised batch tensor; in a DataLoader worker, in shared memory, as torch's own collate does: the
    batch then reaches the main process without the extra copy into shared memory that pickling it would make."""
    dt = torch.from_numpy(np.empty(0, dtype)).dtype
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dt)
    try:  # the private call torch's collate itself uses (torch/utils/data/_utils/collate.py)
        storage = torch.empty(0, dtype=dt)._typed_storage()._new_shared(math.prod(shape))
    except AttributeError:  # pragma: no cover - a torch without it: pickling copies into shared memory instead
        return torch.empty(shape, dtype=dt)
    return torch.empty(0, dtype=dt).set_(storage).view(shape)


def _gather(src: np.ndarray, idx: np.ndarray, out: np.ndarray) -> None:
    """out[j] = src[idx[j]]. Shards read in place are row-strided views (each row followed by its checksum), and
    np.take first copies a non-contiguous source whole: there, one copy per row is ~10x faster (measured)."""
    if src.flags.c_contiguous:
        np.take(src, idx, axis=0, out=out)
    else:
        for j, i in enumerate(idx.tolist()):
            out[j] = src[i]


_WORKER_CONTEXT = None


def worker_context():
    """Workers come from a forkserver that has imported torch and this module once.

    Plain fork is unsafe here: the parent may hold async fsspec clients (s3fs) and Prefect's threads, and forked
    workers then die at exit; spawn would re-import torch in every worker every epoch.
    """
    global _WORKER_CONTEXT
    if _WORKER_CONTEXT is None:
        import multiprocessing

        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["torch", "numpy", "zarr", "distillkit.store.reader"])
        _WORKER_CONTEXT = ctx
    return _WORKER_CONTEXT


def _adopt_environment(env: dict[str, str], _worker_id: int) -> None:
    """Workers fork from the forkserver, which holds the environment of its own start: give them the current one
    (e.g. AWS_* endpoint/credentials set after the first loader was made)."""
    os.environ.update(env)


def make_loader(stream: ShardStream, num_workers: int, epoch: int = 0, start_batch: int = 0,
                pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader over `stream` positioned at (epoch, start_batch)."""
    stream.num_workers = max(num_workers, 1)
    stream.set_epoch(epoch, start_batch)
    return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                                       prefetch_factor=2 if num_workers else None,
                                       multiprocessing_context=worker_context() if num_workers else None,
                                       worker_init_fn=partial(_adopt_environment, dict(os.environ))
                                       if num_workers else None)
