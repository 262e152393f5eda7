"""Stores on S3 through s3fs, against a real S3 API server (moto in server mode on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter

import numpy as np
import pytest
import s3fs
import zarr

from conftest import BIN, REPO, TINY_TEACHER, read_all, tiny_cache_config
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
    proc = subprocess.run([str(BIN / "distillkit"), "inspect", store], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0 and "teachers/dinov2_vits14_reg/patch" in proc.stdout
    assert subprocess.run([str(BIN / "distillkit"), "validate", store], capture_output=True,
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
    exe = str(BIN / "distillkit")

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


def _calls(fn) -> Counter:
    """S3 API calls made by fn, counted at s3fs's single call site (every GET, HEAD, LIST is one _call_s3)."""
    counts: Counter = Counter()
    original = s3fs.S3FileSystem._call_s3

    async def counted(self, method, *args, **kwargs):
        counts[getattr(method, "__name__", str(method))] += 1
        return await original(self, method, *args, **kwargs)

    s3fs.S3FileSystem.clear_instance_cache()  # no listing cache carried over from the upload
    s3fs.S3FileSystem._call_s3 = counted
    try:
        fn()
    finally:
        s3fs.S3FileSystem._call_s3 = original
    return counts


def _upload_metadata(fs: s3fs.S3FileSystem, local, url: str, consolidated: bool) -> None:
    """The zarr.json documents only (opening reads no chunk); `consolidated=False`: without the snapshot."""
    for doc in sorted(local.rglob("zarr.json")):
        body = json.loads(doc.read_text())
        if doc.parent == local and not consolidated:
            body["consolidated_metadata"] = None
        fs.pipe_file(f"{url}/{doc.relative_to(local).as_posix()}", json.dumps(body).encode())


def test_opening_a_1000_shard_store_takes_a_bounded_number_of_requests(s3_bucket, tmp_path):
    """Open a store as its readers do (root, attributes, every array's metadata): with consolidated metadata a
    handful of requests, however many arrays; without it one or more per array."""
    from distillkit_schemas import expected_arrays
    from distillkit_schemas.scenes import expected_scene_arrays, read_scene_info, read_scene_manifest
    from distillkit_schemas.validate import read_manifest, read_provenance
    from test_interop import write_feature_store, write_scene_store

    from distillkit.scenes import store as scene_store
    from distillkit.store.layout import open_group

    def open_features(url):
        g = open_group(url, "r")
        m = read_manifest(g)
        for spec in expected_arrays(m, {t: read_provenance(g, t) for t in m.teachers}):
            assert g[spec.path].shape == spec.shape

    def open_scenes(url):
        g = scene_store.open_store(url)
        m = read_scene_manifest(g)
        for s in m.scenes:
            for spec in expected_scene_arrays(m, read_scene_info(g, s)):
                assert g[spec.path].shape == spec.shape

    fs = s3fs.S3FileSystem()
    features = write_feature_store(tmp_path / "f.zarr", "none", n_samples=1000, shard_size=1, write=False)
    scenes, _ = write_scene_store(tmp_path / "s.zarr", n_frames=1000, frames_per_shard=1, fill=False)
    report = {}
    for kind, local, opener in (("features", features, open_features), ("scenes", scenes, open_scenes)):
        for consolidated in (False, True):
            url = f"{s3_bucket}/{kind}-{consolidated}.zarr"
            _upload_metadata(fs, local, url, consolidated)
            calls = _calls(lambda: opener(f"s3://{url}"))
            report[f"{kind}, {'consolidated' if consolidated else 'live metadata'}"] = dict(calls)
    print(json.dumps(report, indent=1))
    n_arrays = {k: len(list(p.rglob("zarr.json"))) for k, p in (("features", features), ("scenes", scenes))}
    for kind in ("features", "scenes"):
        before = sum(report[f"{kind}, live metadata"].values())
        after = sum(report[f"{kind}, consolidated"].values())
        assert before >= n_arrays[kind] - 1 and after <= 3, (kind, before, after)


def test_validate_on_s3_reads_only_the_selected_shards(cached_store, s3_bucket):
    from distillkit.store.validation import Selection

    fs = s3fs.S3FileSystem()
    fs.put(str(cached_store) + "/", f"{s3_bucket}/v.zarr/", recursive=True)
    url = f"s3://{s3_bucket}/v.zarr"
    found: dict[str, list] = {}
    full = _calls(lambda: found.setdefault("all", validate_store(url, deep=True)))
    one = _calls(lambda: found.setdefault("one", validate_store(url, deep=True, select=Selection(shards="2:"))))
    assert found == {"all": [], "one": []}
    # the 2 shards left out are ~16 objects each (one GET per object, no listing per shard)
    assert sum(full.values()) - sum(one.values()) >= 2 * 12, (full, one)
    assert validate_store(url) == []
