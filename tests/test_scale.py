"""Costs that must not grow with the store (issue 20): each test counts directory entries, object reads or requests
at two store sizes and asserts the count stays the same. Counts, never seconds."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import zarr

from distillkit_schemas import paths
from distillkit_schemas.validate import read_manifest

from distillkit.store import layout, summary
from distillkit.store.inspect import summarize_features
from distillkit.store.writer import ShardResult, TeacherShard, inflight_dir, write_shard


class _ScanCounter:
    """Counts the directory entries listed through os.scandir / os.listdir (pathlib's glob and iterdir use them)."""

    def __init__(self, monkeypatch):
        self.entries = 0
        scandir, listdir = os.scandir, os.listdir
        counter = self

        class _Counted:
            def __init__(self, it):
                self._it = it

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self._it.close()

            def __iter__(self):
                for e in self._it:
                    counter.entries += 1
                    yield e

            def close(self):
                self._it.close()

        def counted_listdir(*a, **k):
            out = listdir(*a, **k)
            counter.entries += len(out)
            return out

        monkeypatch.setattr(os, "scandir", lambda *a, **k: _Counted(scandir(*a, **k)))
        monkeypatch.setattr(os, "listdir", counted_listdir)


def _shard_result(group: zarr.Group, shard: int) -> ShardResult:
    """Shard `shard` as stored, to be written again (the same bytes)."""
    m = read_manifest(group)
    sl = slice(shard * m.shard_size, min((shard + 1) * m.shard_size, m.n_samples))
    teachers = {t: TeacherShard(patch=group[paths.patch(t)][sl], cls=group[paths.cls(t)][sl]) for t in m.teachers}
    return ShardResult(shard=shard, start=sl.start, stop=sl.stop, valid=group["samples/valid"][sl],
                       error=group["samples/error"][sl].tolist(), source_hw=group["samples/source_hw"][sl],
                       view=group["samples/view"][sl], image=group["samples/image"][sl], teachers=teachers)


def _grow_chunk_folders(store: Path, extra: int) -> None:
    """Stand-ins for the chunks of `extra` other shards in the flat `c/` folders (what a big store has)."""
    for array in ("samples/valid", "samples/id", "progress/shard_done"):
        for j in range(extra):
            (store / array / "c" / str(1000 + j)).touch()


def test_writing_a_shard_lists_nothing_that_grows_with_the_store(cached_store, tmp_path, monkeypatch):
    counts = {}
    for extra in (0, 600):
        store = tmp_path / f"s{extra}.zarr"
        shutil.copytree(cached_store, store)
        _grow_chunk_folders(store, extra)
        group = layout.open_group(str(store), "r+")
        shard = _shard_result(group, 1)
        counter = _ScanCounter(monkeypatch)
        write_shard(group, shard)
        counts[extra] = counter.entries
        monkeypatch.undo()
    assert counts[0] == counts[600], f"entries listed per shard write: {counts}"


def test_a_killed_writers_debris_is_cleaned(cached_store, tmp_path):
    """A writer killed mid-shard leaves temp files and its in-flight record; rewriting the shard removes both,
    and touches no other shard's files."""
    store = tmp_path / "killed.zarr"
    shutil.copytree(cached_store, store)
    group = layout.open_group(str(store), "r+")
    m = read_manifest(group)
    t = m.teachers[0]
    debris = [store / "samples/valid/c/1.0123abcd.partial", store / "progress/shard_done/c/1.89ab.partial",
              store / paths.stats(t, "shard_patch_mean") / "c/1/0.4567cdef.partial"]
    others = [store / "samples/valid/c/2.0123abcd.partial", store / "samples/valid/c/11.0123abcd.partial"]
    for d in debris + others:
        d.write_bytes(b"half")
    marker = inflight_dir(group) / "1"
    marker.parent.mkdir(exist_ok=True)
    marker.touch()  # what begin_shard recorded before the kill
    before = group["samples/valid"][:].copy()
    write_shard(group, _shard_result(group, 1))
    assert not [d for d in debris if d.exists()], "debris of the killed writer left behind"
    assert all(d.exists() for d in others), "another shard's files were touched"
    assert not marker.exists(), "the in-flight record outlived the shard's completion"
    assert np.array_equal(group["samples/valid"][:], before)


def test_without_a_record_no_debris_search(cached_store, tmp_path):
    """No in-flight record: a completed write leaves nothing in flight, and nothing is searched for."""
    store = tmp_path / "clean.zarr"
    shutil.copytree(cached_store, store)
    group = layout.open_group(str(store), "r+")
    write_shard(group, _shard_result(group, 0))
    assert not list(inflight_dir(group).iterdir())


class _ReadCounter:
    """Counts the objects a local zarr store reads (LocalStore.get), by key."""

    def __init__(self, monkeypatch):
        from zarr.storage import LocalStore

        self.keys: list[str] = []
        get = LocalStore.get

        async def counted(store, key, *a, **k):
            self.keys.append(key)
            return await get(store, key, *a, **k)

        monkeypatch.setattr(LocalStore, "get", counted)

    def data(self) -> list[str]:
        """Chunk reads (metadata documents are a constant few whatever the size)."""
        return sorted(k for k in self.keys if not k.endswith("zarr.json"))


def _manifest(path: Path, photos: Path, n: int) -> Path:
    """n unique ids over the few real photos (the samples differ by id, not by picture)."""
    files = sorted(photos.iterdir())
    path.write_text("".join(f'{{"id": "img_{k:06d}", "uri": "{files[k % len(files)]}"}}\n' for k in range(n)))
    return path


def _reads(monkeypatch, fn) -> list[str]:
    counter = _ReadCounter(monkeypatch)
    try:
        fn()
    finally:
        monkeypatch.undo()
    return counter.data()


def test_rerun_and_append_read_what_changed_only(photos, tmp_path, monkeypatch):
    """A no-op re-run and an append of one shard read the same objects from a store of 4 shards as from one of
    16: the served version's marks, rows and statistics partials are not read again."""
    from conftest import tiny_cache_config

    from distillkit.cache import run_cache

    seen = {}
    for n in (8, 32):
        src = _manifest(tmp_path / f"m{n}.jsonl", photos, n)
        cfg = tiny_cache_config(src, tmp_path / f"s{n}.zarr", shard_size=2, batch_size=2, num_workers=1)
        run_cache(cfg, show_progress=False)
        noop = _reads(monkeypatch, lambda: run_cache(cfg, show_progress=False))
        _manifest(src, photos, n + 2)  # one more shard
        append = _reads(monkeypatch, lambda: run_cache(cfg, show_progress=False))
        g = layout.open_group(str(cfg.store), "r")
        assert read_manifest(g).n_samples == n + 2
        quick = _reads(monkeypatch, lambda: summarize_features(g, "s"))
        seen[n] = (len(noop), len(append), len(quick))
        _summary_matches_listing(g)
    assert seen[8] == seen[32], f"(no-op, append, inspect) chunk reads at 8 vs 32 samples: {seen}"


def _summary_matches_listing(g: zarr.Group) -> None:
    """inspect's sizes and rejected inputs from finalize's summary (kept up by the append) are the listing's; a
    store without a summary (an older one) still inspects, by listing, and says so."""
    quick, exact = summarize_features(g, "s"), summarize_features(g, "s", exact=True)
    assert quick.source == "summary" and exact.source == "listing"
    assert {a["path"]: a["stored_bytes"] for a in quick.arrays} == {a["path"]: a["stored_bytes"]
                                                                     for a in exact.arrays}
    assert quick.rejected == exact.rejected and quick.shards_done == exact.shards_done
    (Path(g.store.root) / summary.KEY).unlink()
    older = summarize_features(g, "s")
    assert older.source.startswith("listing (no summary") and older.arrays == exact.arrays


def test_incremental_statistics_equal_a_full_merge(photos, tmp_path):
    """Stored totals + the new shards' partials give the same bits as merging every shard again."""
    from conftest import tiny_cache_config

    from distillkit.cache import run_cache
    from distillkit.store.finalize import merge_statistics

    src = _manifest(tmp_path / "m.jsonl", photos, 6)
    cfg = tiny_cache_config(src, tmp_path / "s.zarr", shard_size=2, batch_size=2, num_workers=1)
    run_cache(cfg, show_progress=False)
    _manifest(src, photos, 9)
    run_cache(cfg, show_progress=False)
    g = layout.open_group(str(cfg.store), "r+")
    m = read_manifest(g)
    t = m.teachers[0]
    names = ["patch_mean", "patch_std", "cls_mean", "cls_std", "count"]
    incremental = {k: g[paths.stats(t, k)][...].copy() for k in names}
    merge_statistics(g, m)  # every shard
    for k in names:
        assert np.array_equal(incremental[k], g[paths.stats(t, k)][...]), f"{k}: incremental merge differs"


def test_bench_scale_json(tmp_path):
    """`bench scale --s3` on two tiny sizes: every operation timed and counted per size, with its fitted exponent;
    the child-process ones with their peak RSS; the S3 ones with the server's requests."""
    import json

    from typer.testing import CliRunner

    from distillkit.cli import app

    res = CliRunner().invoke(app, ["bench", "scale", "--sizes", "32,64", "--shard-size", "16", "--workdir",
                                   str(tmp_path), "--json", "--s3"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout[res.stdout.index("{"):])
    assert out["sizes"] == [32, 64]
    for name in ("write_per_shard", "noop_rerun", "append_64", "append_1pct", "inspect", "inspect_exact", "validate",
                 "train_first_step"):
        op = out["operations"][name]
        assert set(op["seconds"]) == {"32", "64"} and all(s > 0 for s in op["seconds"].values()), name
        assert isinstance(op["exponent"], float) and op["at_20_7M_s"] > 0, name
    for name in ("noop_rerun", "append_1pct", "train_first_step"):  # run in a child process: its peak RSS
        op = out["operations"][name]
        assert all(op["peak_rss_mb"][k] > op["base_rss_mb"][k] > 0 for k in ("32", "64")), name
        assert isinstance(op["peak_rss_exponent"], float), name
    assert out["operations"]["append_1pct"]["added"] == {"32": 16, "64": 16}  # at least one shard
    for name in ("s3_noop_rerun", "s3_append_1pct"):  # requests the S3 server saw: the same at both sizes
        op = out["operations"][name]
        assert op["reads"]["32"] == op["reads"]["64"] > 0, (name, op["requests_by_method"])
    assert all(r > 0 for r in out["operations"]["validate"]["disk_ratio"].values())  # vs the disk, same files
    train = out["operations"]["train_first_step"]
    assert train["total_s"]["64"] >= train["seconds"]["64"]
    assert out["operations"]["inspect"]["reads"]["32"] == out["operations"]["inspect"]["reads"]["64"]
    assert out["stores"]["64"]["files"] > out["stores"]["32"]["files"]


def test_a_killed_repair_is_finished_by_the_next_run(cached_store, tmp_path):
    """A repair resets the marks of a complete store's damaged shards (and flags the store): a run killed there is
    finished by the next `cache`, which reads every mark because of the flag, recomputes the shard, merges the
    statistics and rewrites the summary."""
    from conftest import tiny_cache_config

    from distillkit.cache import run_cache
    from distillkit.store.finalize import REPAIR_ATTR

    store = tmp_path / "repairing.zarr"
    shutil.copytree(cached_store, store)
    g = layout.open_group(str(store), "r+")
    m = read_manifest(g)
    want = g[paths.stats(m.teachers[0], "patch_mean")][:].copy()
    g.attrs[REPAIR_ATTR] = [1]
    g["progress/shard_done"][1] = 0
    cfg = tiny_cache_config(read_manifest(g).source, store)
    res = run_cache(cfg, show_progress=False)
    g = layout.open_group(str(store), "r")
    assert res["shards"] == 1 and g["progress/shard_done"][:].all()
    assert not g.attrs.get(REPAIR_ATTR)
    assert np.array_equal(g[paths.stats(m.teachers[0], "patch_mean")][:], want)
    assert summary.read_summary(g)["version"] == read_manifest(g).version


def test_a_training_stream_holds_bits_per_sample_not_ids_or_rows(photos, tmp_path, monkeypatch):
    """Opening a store for training and taking the first batch (what the trainer does before its first step)
    retains and peaks at the same memory for 64 and 2,048 samples, give or take its per-shard counts and one bit
    per sample: ids travel with the shards read, each block's row order is made when the block is reached, and
    the sample table is streamed a bounded chunk at a time (shrunk here to 1,024 rows, as 2^20 rows are at scale).
    Bytes traced by tracemalloc, never seconds. Before: ids, flags and the epoch's row order, ~50 bytes a sample."""
    import gc
    import tracemalloc

    from conftest import tiny_cache_config

    from distillkit.cache import run_cache
    from distillkit.store import reader, rowbits, source

    monkeypatch.setattr(source, "TABLE_ROWS", 1024)
    monkeypatch.setattr(rowbits, "STEP", 1024)
    stores = {}
    for n in (64, 2048):
        src = _manifest(tmp_path / f"m{n}.jsonl", photos, n)
        cfg = tiny_cache_config(src, tmp_path / f"s{n}.zarr", shard_size=16, batch_size=64, num_workers=1,
                                image_size=28, val_fraction=0.1)
        run_cache(cfg, show_progress=False)
        stores[n] = str(cfg.store)

    def held_by_a_stream(store: str) -> tuple[int, int]:
        tracemalloc.start()
        stream = reader.ShardStream([reader.StoreSource(store)], 8, "train", seed=0)
        stream.batches_per_epoch(0)
        batch = next(iter(stream))
        gc.collect()  # the event loop's reference cycles: garbage, not held
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert len(batch["ids"]) == 8 and all(i.startswith("img_") for i in batch["ids"])
        return current, peak

    held_by_a_stream(stores[64])  # once first: one-time allocations (caches, lazy imports) land outside the count
    held = {n: held_by_a_stream(store) for n, store in stores.items()}
    grown = 2048 - 64
    allowance = 2 * grown + 64 * grown // 16  # the bits (and slack), a few int64 counts and shard numbers per shard
    assert held[2048][0] - held[64][0] < allowance, held
    assert held[2048][1] - held[64][1] < allowance, held


def test_training_never_reads_the_whole_sample_table(cached_store, tmp_path, monkeypatch):
    """A DUNE run (steps, the final evaluation, the checkpoint) uses the streamed table only: the whole-table view
    that tools use (ids, valid and split of every sample, O(N) in memory) is never built."""
    from distillkit.store.reader import StoreSource
    from distillkit.training.dune.config import TrainConfig
    from distillkit.training.dune.trainer import train

    def refuse(self):
        raise AssertionError("training read the whole sample table")

    monkeypatch.setattr(StoreSource, "_table", property(refuse))
    res = train(TrainConfig(stores=[str(cached_store)], out_dir=str(tmp_path), batch_size=3, max_steps=3,
                            num_workers=0, student={"preset": "custom", "embed_dim": 32, "depth": 1, "num_heads": 1}))
    assert res["steps"] == 3 and res["final_eval"]
