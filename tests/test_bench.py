"""`distillkit bench`: the JSON a user scripts against (figures themselves are not asserted: machines are noisy)."""

from __future__ import annotations

import json
import subprocess

from conftest import BIN, REPO


def _run(*args):
    proc = subprocess.run([str(BIN / "distillkit"), "bench", *map(str, args), "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_bench_loader_json(cached_store):
    res = _run("loader", "--store", cached_store, "--batch-size", "4", "--epochs", "1")
    for key in ("zarr_samples_per_s", "zarr_mb_per_s", "memmap_samples_per_s", "memmap_mb_per_s",
                "ratio_vs_memmap", "bare_memmap_copy_mb_per_s"):
        assert res[key] > 0, key
    assert res["samples"] == 12
    assert abs(res["ratio_vs_memmap"] - res["zarr_samples_per_s"] / res["memmap_samples_per_s"]) < 1e-9


def test_bench_cache_json(photos):
    from distillkit.bench.cache import bench_cache

    res = bench_cache(str(photos), "dinov2_vits14_reg", image_size="56", batch_size=4, shard_size=4,
                      overrides={"depth": 2})
    assert res["images"] == 12 and res["rejected"] == 0
    assert res["cache_wall_s"] > 0 and res["bare_forward_s"] > 0
    assert abs(res["overhead_ratio"] - res["cache_wall_s"] / res["bare_forward_s"]) < 1e-9
    assert res["bottleneck"] in res["stages"] and res["pipeline_core_ms_per_image"] > 0
    assert res["teacher"] == "dinov2_vits14_reg"


def test_bench_cache_null_teachers_on_written_photographs():
    """No source: 640x480 JPEG photographs are written; --null-teacher stands in for each teacher, labelled so."""
    res = _run("cache", "--null-teacher", "--teacher", "dinov2_vits14", "--teacher", "dinov2_vits14_reg",
               "--images", "8", "--image-size", "56", "--batch-size", "4", "--shard-size", "4")
    assert res["teacher"] == "dinov2_vits14 (null: shapes only), dinov2_vits14_reg (null: shapes only)"
    assert res["images"] == 8 and res["null_teacher"] is True and res["rejected"] == 0
    assert res["teacher_cpu_s"] < res["cache_cpu_s"] and res["bottleneck"] in ("decode", "teachers", "finish", "write")


def test_bench_align_fixture_and_synthetic():
    fixture = REPO.parent / "shared" / "fixtures" / "dust3r" / "ga_scene6.npz"
    if fixture.exists():
        res = _run("align", "--fixture", fixture)
        for key in ("wall_s", "iterations", "peak_rss_mb", "mean_dist_to_reference_over_depth",
                    "rel_rot_err_deg_mean", "rel_rot_err_deg_max", "focal_rel_err_mean"):
            assert key in res, key
        assert res["mean_dist_to_reference_over_depth"] <= 1e-3
        assert res["rel_rot_err_deg_max"] <= 0.1
    res = _run("align", "--synthetic", "5", "--size", "24x32", "--graph", "complete")
    assert res["n_images"] == 5 and res["rel_rot_err_deg_max"] < 1.0
    bad = subprocess.run([str(BIN / "distillkit"), "bench", "align", "--fixture", "/nope.npz"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "/nope.npz" in bad.stderr


def test_bench_validate_json(cached_store):
    from pathlib import Path

    res = _run("validate", cached_store, "--rounds", "2")
    files = [p for p in Path(cached_store).rglob("*") if p.is_file()]
    assert res["validate_deep"]["files"] == len(files)  # --deep reads every object
    assert res["validate_deep"]["bytes"] == sum(p.stat().st_size for p in files)
    assert 0 < res["validate"]["bytes"] < res["validate_deep"]["bytes"]  # the quick check skips e.g. the images
    for check in ("validate", "validate_deep"):
        assert len(res[check]["ratio"]) == 2 and res[check]["ratio_median"] > 0
        assert res[check]["ratio"][0] == res[check]["disk_s"][0] / res[check]["check_s"][0]


def test_bench_validate_refuses_a_remote_or_missing_store(tmp_path):
    for store in ("s3://bucket/store.zarr", tmp_path / "nope.zarr"):
        bad = subprocess.run([str(BIN / "distillkit"), "bench", "validate", str(store)], capture_output=True,
                             text=True, timeout=120)
        assert bad.returncode != 0 and "not a local store folder" in bad.stderr + bad.stdout
