"""`distillkit bench loader`: the training reader against the same pipeline over a raw memory-mapped .npy copy."""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import numpy as np
import torch

from distillkit.store.reader import MemmapSource, ShardStream, StoreSource, make_loader


def _epoch(stream: ShardStream, num_workers: int, epoch: int) -> tuple[int, int, float]:
    n = nbytes = 0
    t0 = time.perf_counter()
    for batch in make_loader(stream, num_workers, epoch=epoch):
        n += len(batch["ids"])
        nbytes += sum(v.numel() * v.element_size() for k, v in batch.items() if isinstance(v, torch.Tensor)
                      and k != "rows")
    return n, nbytes, time.perf_counter() - t0


def bench_loader(store: str, batch_size: int = 64, num_workers: int = 0, epochs: int = 2, shuffle_shards: int = 2,
                 storage_options: dict | None = None) -> dict:
    """Samples/s and MB/s of the training reader vs the identical pipeline over memory-mapped .npy copies."""
    src = StoreSource(store, None, storage_options)
    with tempfile.TemporaryDirectory(prefix="distillkit-bench-") as tmp:
        names = src.array_names(True)
        for name in names:
            np.save(os.path.join(tmp, name.replace("/", "__") + ".npy"), src.read(name, 0, len(src.ids)))
        mm = MemmapSource(src, tmp)
        t0 = time.perf_counter()
        copied = sum(np.array(np.load(os.path.join(tmp, n.replace("/", "__") + ".npy"), mmap_mode="r")).nbytes
                     for n in names)
        bare_copy_mb_s = copied / 1e6 / (time.perf_counter() - t0)
        runs: dict[str, list[tuple[int, int, float]]] = {"zarr": [], "memmap": []}
        streams = {k: ShardStream([s], batch_size, "all", seed=0, shuffle_shards=shuffle_shards)
                   for k, s in (("zarr", src), ("memmap", mm))}
        for kind, stream in streams.items():  # warm-up: page cache, imports, worker start-up paths
            _epoch(stream, num_workers, 0)
        for e in range(epochs):  # alternate so drift on a shared machine hits both alike
            for kind, stream in streams.items():
                runs[kind].append(_epoch(stream, num_workers, e + 1))

    def rate(kind: str) -> tuple[float, float]:
        sps = statistics.median(n / t for n, _, t in runs[kind])
        mbs = statistics.median(b / 1e6 / t for _, b, t in runs[kind])
        return sps, mbs

    requests = _count_requests(src, batch_size, shuffle_shards) if "://" in store else None
    z_sps, z_mbs = rate("zarr")
    m_sps, m_mbs = rate("memmap")
    return {"bench": "loader", "store": store, "samples": runs["zarr"][0][0], "batch_size": batch_size,
            "num_workers": num_workers, "epochs": epochs, "zarr_samples_per_s": z_sps, "zarr_mb_per_s": z_mbs,
            "memmap_samples_per_s": m_sps, "memmap_mb_per_s": m_mbs, "ratio_vs_memmap": z_sps / m_sps,
            "bare_memmap_copy_mb_per_s": bare_copy_mb_s,
            **({"requests_per_sample": requests["total"] / max(runs["zarr"][0][0], 1),
                "requests_by_kind": requests["by_kind"]} if requests else {})}


def _count_requests(src: StoreSource, batch_size: int, shuffle_shards: int) -> dict:
    """Storage API calls (GET, HEAD, LIST, ...) of one in-process epoch, counted at s3fs's single call site."""
    from collections import Counter

    counts: Counter = Counter()
    src._open()
    fs = next(iter(src._arrays.values())).store.fs
    original = fs._call_s3

    async def counted(method, *args, **kwargs):
        counts[getattr(method, "__name__", str(method))] += 1
        return await original(method, *args, **kwargs)

    fs._call_s3 = counted
    try:
        _epoch(ShardStream([src], batch_size, "all", seed=0, shuffle_shards=shuffle_shards), 0, 0)
    finally:
        fs._call_s3 = original
    return {"total": sum(counts.values()), "by_kind": dict(counts)}
