"""Costs that must not grow with the store (issue 20): each test counts directory entries, object reads or requests
at two store sizes and asserts the count stays the same. Counts, never seconds."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from distillkit_schemas import paths
from distillkit_schemas.validate import read_manifest

from distillkit.store import layout
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
