"""`distillkit bench loader --peers`: LitData, MDS and WebDataset written and read with their own libraries, locally
and on a real S3 API server (moto), against the training reader; the same samples decode to the same tensors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import s3fs

from distillkit.bench.peers import compare
from distillkit.bench.peers.common import column
from distillkit.store.reader import ShardStream, StoreSource, make_loader

ALL = ["litdata", "mds", "webdataset"]


def _check(res: dict, n: int) -> None:
    assert res["unavailable"] == {} and set(res["loaders"]) == {"distillkit", *ALL}
    for name, r in res["loaders"].items():
        assert r["samples"] == n and r["samples_per_s"] > 0 and r["mb_per_s"] > 0, name
        assert r["every_sample_once"] and r["first_batch_equals_store"], name
    best = max(ALL, key=lambda p: res["loaders"][p]["samples_per_s"])
    assert res["best_peer"] == best
    ours = res["loaders"]["distillkit"]["samples_per_s"]
    assert abs(res["ratio_vs_best_peer"] - ours / res["loaders"][best]["samples_per_s"]) < 1e-9


def test_cli_peers_json(cached_store):
    # one light peer through the command line (the JSON a user scripts against); all peers in-process below.
    # In-process (CliRunner): a subprocess would import torch and the peers again (~10 s here)
    from typer.testing import CliRunner

    from distillkit.cli import app

    r = CliRunner().invoke(app, ["bench", "loader", "--store", str(cached_store), "--peers", "webdataset",
                                 "--batch-size", "4", "--epochs", "1", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output[r.output.index("{"):])
    assert res["location"] == "local" and res["shard_size"] == 4 and res["best_peer"] == "webdataset"
    assert res["loaders"]["webdataset"]["every_sample_once"] and res["loaders"]["webdataset"]["samples"] == 12
    assert res["loaders"]["distillkit"]["mid_epoch_resume"] == "exact"
    bad = CliRunner().invoke(app, ["bench", "loader", "--store", str(cached_store), "--peers", "litdata,tfrecord"])
    assert bad.exit_code == 2 and "tfrecord" in bad.output


def test_all_peers_local(cached_store):
    res = compare.bench_peers(str(cached_store), ALL, batch_size=4, epochs=1)
    assert res["location"] == "local"
    _check(res, 12)
    # interrupted half-way and resumed: ours continues the exact order; each peer's own mechanism is reported
    resumed = {k: r["mid_epoch_resume"] for k, r in res["loaders"].items()}
    assert resumed["distillkit"] == "exact" and resumed["webdataset"].startswith("no resume API"), resumed
    assert all(v == "exact" or v.startswith(("same samples", "wrong:")) for k, v in resumed.items()
               if k in ("litdata", "mds")), resumed


def _epoch(batches, names) -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, np.ndarray]] = {}
    for b in batches:
        ids = b.get("ids", b.get("id"))
        for j, i in enumerate(ids):
            assert i not in out, f"{i} twice"
            out[i] = {name: b[key][j].numpy() for key, name in names.items()}
    return out


def test_every_loader_decodes_the_same_tensors(cached_store, tmp_path):
    src = StoreSource(str(cached_store))
    arrays = src.array_names(True)
    ours = _epoch(make_loader(ShardStream([src], 5, "all", seed=0), 0), {n: n for n in arrays})
    assert len(ours) == 12
    for peer in ALL:
        mod = __import__(compare.PEERS[peer], fromlist=["write"])
        mod.write(src, str(tmp_path / peer))
        theirs = _epoch(mod.loader(str(tmp_path / peer), str(tmp_path / f"cache-{peer}"), 5, 0, 1, 8),
                        {column(n): n for n in arrays})
        assert theirs.keys() == ours.keys(), peer
        for i in ours:
            for n in arrays:
                a, b = ours[i][n], theirs[i][n]
                assert a.dtype == b.dtype and a.shape == b.shape, (peer, i, n)
                np.testing.assert_array_equal(a, b, err_msg=f"{peer} {i} {n}")


def test_a_peer_that_cannot_import_is_reported_and_the_rest_measured(cached_store, monkeypatch):
    monkeypatch.setitem(compare.PEERS, "webdataset", "distillkit.bench.peers.not_installed_here")
    res = compare.bench_peers(str(cached_store), ["webdataset"], batch_size=6, epochs=1, resume=False)
    assert "webdataset" in res["unavailable"] and "not_installed_here" in res["unavailable"]["webdataset"]
    assert res["best_peer"] is None and res["ratio_vs_best_peer"] is None
    assert res["loaders"]["distillkit"]["samples"] == 12 and res["loaders"]["distillkit"]["every_sample_once"]
    with pytest.raises(ValueError, match="tfrecord"):
        compare.bench_peers(str(cached_store), ["tfrecord"])


@pytest.mark.slow
def test_peers_on_s3_read_through_their_own_s3_clients(cached_store, s3_bucket):
    fs = s3fs.S3FileSystem()
    fs.put(str(cached_store) + "/", f"{s3_bucket}/store.zarr/", recursive=True)
    store = f"s3://{s3_bucket}/store.zarr"
    res = compare.bench_peers(store, ALL, batch_size=4, epochs=1, resume=False)
    assert res["location"] == "s3" and "cold" in res["cache"]
    _check(res, 12)
    fs.invalidate_cache()
    assert fs.ls(s3_bucket) == [f"{s3_bucket}/store.zarr"]  # the peers' copies are removed afterwards
