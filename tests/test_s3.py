"""Stores on S3 through s3fs, against a real S3 API server (moto in server mode on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
import s3fs
import zarr

from conftest import REPO, TINY_TEACHER, read_all, tiny_cache_config
from distillkit.cache import run_cache
from distillkit.training.dune.config import TrainConfig
from distillkit.stores import summarize, validate_store
from distillkit.training.dune.trainer import train

pytestmark = pytest.mark.slow
SECRET = "testing-secret-DO-NOT-LEAK"


def _all_text(fs: s3fs.S3FileSystem, prefix: str) -> str:
    return "\n".join(fs.cat_file(p).decode("latin-1") for p in fs.find(prefix))


def test_cache_inspect_validate_train_on_s3(photos, s3_bucket, tmp_path):
    fs = s3fs.S3FileSystem()
    fs.put(str(photos) + "/", f"{s3_bucket}/photos/", recursive=True)
    store = f"s3://{s3_bucket}/feats/tiny.zarr"
    cfg = tiny_cache_config(f"s3://{s3_bucket}/photos", store, shard_size=5)
    result = run_cache(cfg, show_progress=False)
    assert result["finalize"]["status"] == "complete" and result["finalize"]["n_valid"] == 12
    assert validate_store(store) == []
    # the sharded layout makes one object per shard (3 shards), not one per sample
    for array in ("teachers/dinov2_vits14_reg/patch", "samples/image"):
        chunks = [p for p in fs.find(f"{s3_bucket}/feats/tiny.zarr/{array}") if "/c/" in p]
        assert len(chunks) == 3, chunks
    s = summarize(store)
    assert s.completion == 100.0 and s.manifest["source"] == f"s3://{s3_bucket}/photos"
    env = dict(os.environ)
    proc = subprocess.run([str(REPO / ".venv/bin/distillkit"), "inspect", store], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0 and "teachers/dinov2_vits14_reg/patch" in proc.stdout
    assert subprocess.run([str(REPO / ".venv/bin/distillkit"), "validate", store], capture_output=True,
                          env=env, timeout=120).returncode == 0
    out = tmp_path / "student"
    res = train(TrainConfig(stores=[store], out_dir=str(out), batch_size=3, max_steps=6, num_workers=2,
                            student={"preset": "custom", "embed_dim": 32, "depth": 1, "num_heads": 2},
                            storage_options={"key": os.environ["AWS_ACCESS_KEY_ID"], "secret": SECRET}))
    assert res["steps"] == 6
    # credentials never land in the store, the metrics or the checkpoint's metrics
    assert SECRET not in _all_text(fs, f"{s3_bucket}/feats")
    assert SECRET not in (out / "metrics.json").read_text()
    assert json.loads((out / "metrics.json").read_text())["config"]["storage_options"]["secret"] == "***"


def test_sigkill_and_resume_against_s3(photos, s3_bucket, tmp_path):
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text("teachers:\n  - name: dinov2_vits14_reg\n    overrides: {depth: 2}\n")
    exe = str(REPO / ".venv/bin/distillkit")

    def cmd(store):
        return [exe, "cache", "--source", str(photos), "--store", store, "--image-size", "56", "--shard-size", "2",
                "--batch-size", "2", "--quiet", "--config", str(cfg_file)]

    ref = f"s3://{s3_bucket}/ref.zarr"
    subprocess.run(cmd(ref), check=True, capture_output=True, timeout=300)
    killed = f"s3://{s3_bucket}/killed.zarr"
    fs = s3fs.S3FileSystem()
    proc = subprocess.Popen(cmd(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    marker = f"{s3_bucket}/killed.zarr/progress/shard_done/c/"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        fs.invalidate_cache()
        if fs.exists(marker) and len(fs.ls(marker)) >= 1:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = zarr.open_group(killed, mode="r", use_consolidated=False)["progress/shard_done"][:]
    assert done.sum() < len(done), "finished before the kill: nothing was tested"
    rerun = subprocess.run(cmd(killed), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    a, b = read_all(ref), read_all(killed)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_bench_loader_counts_requests_on_s3(cached_store, s3_bucket):
    fs = s3fs.S3FileSystem()
    fs.put(str(cached_store) + "/", f"{s3_bucket}/store.zarr/", recursive=True)
    from distillkit.bench.loader import bench_loader

    res = bench_loader(f"s3://{s3_bucket}/store.zarr", batch_size=4, epochs=1)
    assert res["samples"] == 12 and res["ratio_vs_memmap"] > 0
    # whole-shard reads: a handful of requests per shard and array, well under one per sample per array
    assert 0 < res["requests_per_sample"] < 3, res["requests_by_kind"]
