"""The sample index written by finalize: readers open a store from it (a few objects, not 3 per shard)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import s3fs
import zarr
from typer.testing import CliRunner

from conftest import tiny_cache_config
from test_s3 import _calls

from distillkit.cache import run_cache
from distillkit.cli import app
from distillkit.store.reader import StoreSource

runner = CliRunner()


@pytest.fixture(scope="module")
def one_row_shards(photos, tmp_path_factory):
    """12 photos, one sample per shard: the per-shard sample table is 36 objects, the index 3."""
    store = tmp_path_factory.mktemp("index") / "s1.zarr"
    run_cache(tiny_cache_config(photos, store, shard_size=1, batch_size=1), show_progress=False)
    return store


def _without_index(store, dest):
    """A copy whose manifest names no index (a store finalized before the index existed)."""
    shutil.copytree(store, dest)
    g = zarr.open_group(str(dest), mode="r+", use_consolidated=False)
    g.attrs["distillkit"] = {**g.attrs["distillkit"], "sample_index": None}
    zarr.consolidate_metadata(str(dest))
    return dest


def test_finalize_writes_the_index_of_the_version(one_row_shards):
    g = zarr.open_group(str(one_row_shards), mode="r")
    m = g.attrs["distillkit"]
    assert m["sample_index"] == f"index/v{m['version']}" == "index/v1"
    for k in ("id", "valid", "split"):
        idx, table = g[f"index/v1/{k}"], g[f"samples/{k}"]
        assert idx.chunks == (12,) and table.chunks == (1,)
        assert idx[:].tolist() == table[:].tolist(), k


def test_reader_serves_the_same_table_with_or_without_the_index(one_row_shards, tmp_path):
    a, b = StoreSource(str(one_row_shards)), StoreSource(str(_without_index(one_row_shards, tmp_path / "old.zarr")))
    assert a.ids.tolist() == b.ids.tolist() and len(a.ids) == 12
    np.testing.assert_array_equal(a.valid, b.valid)
    np.testing.assert_array_equal(a.split, b.split)


def test_validate_names_an_index_that_disagrees_with_the_table(one_row_shards, tmp_path):
    store = tmp_path / "bad.zarr"
    shutil.copytree(one_row_shards, store)
    g = zarr.open_group(str(store), mode="r+", use_consolidated=False)
    v = g["index/v1/valid"][:]
    v[3] = 1 - v[3]
    g["index/v1/valid"][:] = v
    res = runner.invoke(app, ["validate", str(store)])
    assert res.exit_code != 0 and "index/v1/valid" in res.output and "[3]" in res.output, res.output


@pytest.mark.slow
def test_opening_on_s3_reads_the_index_not_every_shard(one_row_shards, s3_bucket, tmp_path):
    fs = s3fs.S3FileSystem()
    old = _without_index(one_row_shards, tmp_path / "old.zarr")
    fs.put(str(one_row_shards), f"{s3_bucket}/new.zarr", recursive=True)
    fs.put(str(old), f"{s3_bucket}/old.zarr", recursive=True)
    got = {}
    # what a training stream does on opening: the sample table's valid and split columns, streamed into bits
    calls = {k: sum(_calls(lambda: got.setdefault(k, StoreSource(f"s3://{s3_bucket}/{k}.zarr")).usable_bits(
        "train")).values()) for k in ("new", "old")}
    print(json.dumps(calls))
    assert got["new"].ids.tolist() == got["old"].ids.tolist()
    np.testing.assert_array_equal(got["new"].usable_bits("train"), got["old"].usable_bits("train"))
    assert calls["old"] >= 2 * 12 and calls["new"] <= 12, calls  # 2 objects per shard vs a bounded handful


def test_a_rerun_adds_the_index_to_a_store_finalized_without_one(one_row_shards, photos, tmp_path):
    old = _without_index(one_row_shards, tmp_path / "old.zarr")
    res = run_cache(tiny_cache_config(photos, old, shard_size=1, batch_size=1), show_progress=False)
    assert res["nothing_to_do"]
    g = zarr.open_group(str(old), mode="r")
    m = g.attrs["distillkit"]
    assert m["sample_index"] == "index/v1" and m["version"] == 1  # the same version, now with its index
    assert g["index/v1/id"][:].tolist() == g["samples/id"][:].tolist()
    assert runner.invoke(app, ["validate", str(old)]).exit_code == 0


def test_a_damaged_index_is_found_by_validate_deep_and_rewritten_by_repair(one_row_shards, photos, tmp_path):
    from distillkit.repair import repair_store

    store = tmp_path / "flipped.zarr"
    shutil.copytree(one_row_shards, store)
    chunk = store / "index/v1/valid/c/0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    res = runner.invoke(app, ["validate", str(store), "--deep"])
    assert res.exit_code != 0 and "index/v1/valid" in res.output, res.output
    # a reader is not stopped by it: samples/ (the table the index copies) serves instead
    np.testing.assert_array_equal(StoreSource(str(store)).valid, StoreSource(str(one_row_shards)).valid)
    out = repair_store(tiny_cache_config(photos, store, shard_size=1, batch_size=1), show_progress=False)
    assert out["damaged_arrays"] == ["index/v1/valid"] and out["repaired_shards"] == []
    assert chunk.read_bytes() == (one_row_shards / "index/v1/valid/c/0").read_bytes()
    assert runner.invoke(app, ["validate", str(store), "--deep"]).exit_code == 0
