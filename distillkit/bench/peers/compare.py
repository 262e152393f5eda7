"""`distillkit bench loader --peers ...`: the training reader against LitData, MDS and WebDataset in one run.

Every peer gets the same samples (every valid row: image + every teacher's arrays), written with its own writer in
shards of the store's shard size, and is read with its own loader at the same batch size, workers and shuffling
(shard order + a shuffle window of `shuffle_shards` shards). Remote peers get a fresh, empty cache dir for every
epoch, so each timed epoch is a cold first epoch: what training from S3 sees. The timer runs from making the
dataset and loader to the last batch, for every loader alike."""

from __future__ import annotations

import gc
import glob
import importlib
import shutil
import statistics
import tempfile
import time
from collections import Counter
from typing import Any, Callable

import numpy as np
import torch

from distillkit.bench.peers.common import column, delete_prefix, is_remote, tensor_bytes
from distillkit.store.reader import ShardStream, StoreSource, make_loader

PEERS = {"litdata": "distillkit.bench.peers.lit", "mds": "distillkit.bench.peers.mds",
         "webdataset": "distillkit.bench.peers.wds"}
CACHES = {"distillkit": "none: whole-shard reads from the store", "litdata": "downloads whole chunks to a cache dir",
          "mds": "downloads whole shards to its local dir", "webdataset": "none: streams each tar through curl"}


def _normalize(batch: dict[str, Any], names: dict[str, str]) -> tuple[list[str], dict[str, torch.Tensor]]:
    """(ids, {array name: tensor}) from any loader's batch; names maps a peer's column back to the array name."""
    ids = batch.get("ids", batch.get("id"))
    return [str(i) for i in ids], {names[k]: v for k, v in batch.items() if k in names}


def _epoch(make: Callable[[], Any], names: dict[str, str]) -> dict[str, Any]:
    n = nbytes = 0
    ids: list[str] = []
    first = None
    t_first = n_first = 0
    t0 = time.perf_counter()
    for batch in make():
        b_ids, arrays = _normalize(batch, names)
        n += len(b_ids)
        nbytes += tensor_bytes(arrays)
        ids += b_ids
        if first is None:
            first = (b_ids, {k: v.clone() for k, v in arrays.items()})
            t_first, n_first = time.perf_counter() - t0, n
    return {"n": n, "bytes": nbytes, "s": time.perf_counter() - t0, "ids": ids, "first": first,
            "first_s": t_first, "n_first": n_first}


def _matches_store(src: StoreSource, first: tuple[list[str], dict[str, torch.Tensor]]) -> bool:
    """Every array of every sample of a batch equals the store's row of that id, bit for bit."""
    ids, arrays = first
    row_of = {str(i): r for r, i in enumerate(src.ids)}
    store = src._open()
    return set(arrays) == set(src.array_names(True)) and all(
        np.array_equal(arrays[k][j].numpy(), store[k][row_of[i]], equal_nan=True)
        for j, i in enumerate(ids) for k in arrays)


def _batch_ids(loader, names: dict[str, str], limit: int | None = None) -> list[list[str]]:
    out = []
    for batch in loader:
        out.append(_normalize(batch, names)[0])
        if limit is not None and len(out) == limit:
            break
    return out


def _resume(make: Callable[..., Any], mod: Any, names: dict[str, str], cache: str) -> str:
    """Interrupt an epoch half-way, resume it with the loader's own mechanism, compare with the uninterrupted one.

    distillkit: a new loader at start_batch=k; LitData / MDS: the loader's state_dict() after k batches, loaded
    into a new loader on the same cache dir (as a restarted job would be); WebDataset has no loader state."""
    full = _batch_ids(make(7, cache=cache), names)
    k = len(full) // 2
    if mod is None:
        rest = _batch_ids(make(7, start_batch=k), names)
    elif not hasattr(mod, "state"):
        return "no resume API: the epoch starts over"
    else:
        first = make(7, cache=cache)
        it = iter(first)
        for _ in range(k):
            next(it)
        saved = mod.state(first)
        del it, first
        gc.collect()  # MDS allows one live dataset per local dir
        second = make(7, cache=cache)
        mod.restore(second, saved)
        rest = _batch_ids(second, names)
    want, got = [i for b in full[k:] for i in b], [i for b in rest for i in b]
    if rest == full[k:]:
        return "exact"
    if sorted(want) == sorted(got):
        return "same samples, other order"
    lost, extra = Counter(want) - Counter(got), Counter(got) - Counter(want)
    return f"wrong: {sum(lost.values())} of {len(want)} remaining samples lost, {sum(extra.values())} extra"


def _load_peers(peers: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    mods, missing = {}, {}
    for p in peers:
        if p not in PEERS:
            raise ValueError(f"unknown peer {p!r}; choose from {', '.join(PEERS)}")
        try:
            mod = importlib.import_module(PEERS[p])
            importlib.import_module({"mds": "streaming"}.get(p, p))
            mods[p] = mod
        except ImportError as e:  # measured without it, and said so
            missing[p] = f"cannot import: {e}"
    return mods, missing


def bench_peers(store: str, peers: list[str], batch_size: int = 64, num_workers: int = 0, epochs: int = 2,
                shuffle_shards: int = 2, storage_options: dict | None = None, peers_dir: str | None = None,
                resume: bool = True) -> dict:
    src = StoreSource(store, None, storage_options)
    mods, missing = _load_peers(peers)
    remote = is_remote(store)
    tmp = tempfile.mkdtemp(prefix="distillkit-bench-peers-")
    base = (peers_dir or (store.rstrip("/") + ".bench-peers" if remote else tmp)).rstrip("/")
    valid_ids = sorted(str(i) for i in src.ids[src.valid])
    block = shuffle_shards * src.manifest.shard_size
    names = {n: n for n in src.array_names(True)}
    peer_names = {column(n): n for n in names}
    out: dict[str, dict[str, Any]] = {"distillkit": {"reads": CACHES["distillkit"]}}
    makers: dict[str, Callable[[int], Any]] = {}

    def fresh_cache() -> str:
        return tempfile.mkdtemp(prefix="cache-", dir=tmp)

    def ours(epoch: int, start_batch: int = 0, cache: str | None = None):
        stream = ShardStream([StoreSource(store, None, storage_options)], batch_size, "all", seed=0,
                             shuffle_shards=shuffle_shards)
        return make_loader(stream, num_workers, epoch=epoch, start_batch=start_batch)

    makers["distillkit"] = ours
    try:
        for name, mod in mods.items():
            target = f"{base}/{name}"
            t0 = time.perf_counter()
            info = mod.write(src, target)
            out[name] = {**info, "reads": CACHES[name], "write_s": time.perf_counter() - t0}
            makers[name] = (lambda m, t: lambda e, start_batch=0, cache=None: m.loader(
                t, cache or fresh_cache(), batch_size, num_workers, e, block))(mod, target)
        runs: dict[str, list[dict]] = {k: [] for k in makers}
        for k, make in makers.items():  # warm-up: imports, worker start-up, the page cache (local stores)
            _epoch(lambda: make(0), names if k == "distillkit" else peer_names)
        for e in range(epochs):  # round-robin so drift on a shared machine hits every loader alike
            for k, make in makers.items():
                runs[k].append(_epoch(lambda: make(e + 1), names if k == "distillkit" else peer_names))
                for d in glob.glob(f"{tmp}/cache-*"):  # the next epoch starts cold again
                    shutil.rmtree(d, ignore_errors=True)
        if resume:
            for k, make in makers.items():
                out[k]["mid_epoch_resume"] = _resume(make, mods.get(k), names if k == "distillkit" else peer_names,
                                                     fresh_cache())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if remote and peers_dir is None:
            delete_prefix(base)
    for k, rs in runs.items():
        out[k].update({
            "samples_per_s": statistics.median(r["n"] / r["s"] for r in rs),
            "mb_per_s": statistics.median(r["bytes"] / 1e6 / r["s"] for r in rs),
            "epoch_s": [round(r["s"], 4) for r in rs], "samples": rs[0]["n"],
            # start-up (workers, opening, the first read) apart from the steady rate after the first batch
            "first_batch_s": statistics.median(r["first_s"] for r in rs),
            "after_first_batch_samples_per_s": statistics.median((r["n"] - r["n_first"]) / max(r["s"] - r["first_s"],
                                                                                            1e-9) for r in rs),
            "every_sample_once": all(sorted(r["ids"]) == valid_ids for r in rs),
            "first_batch_equals_store": _matches_store(src, rs[0]["first"])})
    best = max(mods, key=lambda p: out[p]["samples_per_s"]) if mods else None
    return {"bench": "loader-peers", "store": store, "location": "s3" if remote else "local",
            "samples": len(valid_ids), "batch_size": batch_size, "num_workers": num_workers, "epochs": epochs,
            "shuffle_shards": shuffle_shards, "shard_size": src.manifest.shard_size,
            "cache": "fresh empty cache per epoch (cold)" if remote else "read in place (page cache warm)",
            "loaders": out, "unavailable": missing, "best_peer": best,
            "ratio_vs_best_peer": out["distillkit"]["samples_per_s"] / out[best]["samples_per_s"] if best else None}


def flat(res: dict) -> dict:
    """The result as one level (for the table view): loaders.<name>.<field> -> <name>.<field>; lists left out."""
    out = {k: v for k, v in res.items() if not isinstance(v, (dict, list))}
    for name, fields in res["loaders"].items():
        out.update({f"{name}.{k}": v for k, v in fields.items() if not isinstance(v, (dict, list))})
    out.update({f"{name}.unavailable": why for name, why in res["unavailable"].items()})
    return out
