"""Caching end to end through the CLI and the library: content, statistics, reruns, bad inputs, refusals."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import zarr
from PIL import Image

from conftest import BIN, REPO, TINY_TEACHER, read_all, tiny_cache_config
from distillkit.features.pipeline import run_cache
from distillkit.store import NotAStore, StoreMismatch

CLI = [str(BIN / "distillkit")] if (BIN / "distillkit").exists() else [sys.executable, "-m", "distillkit.cli"]


def cli(*args, check=True):
    proc = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"distillkit {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout}\n"
                             f"{proc.stderr}")
    return proc


def test_cli_cache_then_rerun_is_noop_and_store_is_valid(photos, tmp_path):
    store = tmp_path / "cli.zarr"
    args = ["cache", "--source", photos, "--store", store, "--teacher", "dinov2_vits14_reg", "--image-size", "56",
            "--shard-size", "5", "--quiet"]
    # the CLI has no --overrides flag: use a YAML config for the tiny architecture
    cfg = tmp_path / "cache.yaml"
    cfg.write_text(f"teachers:\n  - name: dinov2_vits14_reg\n    overrides: {{depth: 2}}\n")
    first = cli(*args, "--config", cfg)
    assert "cached 12 samples in 3 shards" in first.stdout
    assert "RANDOM" in first.stderr  # random init is announced loudly
    g = zarr.open_group(str(store), mode="r")
    man = g.attrs["distillkit"]
    assert man["status"] == "complete" and man["n_valid"] == 12 and man["n_rejected"] == 0
    assert g["progress/shard_done"][:].tolist() == [1, 1, 1]
    before = read_all(store)
    second = cli(*args, "--config", cfg)
    assert "already complete: nothing to do" in second.stdout
    after = read_all(store)
    assert before.keys() == after.keys()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])
    assert cli("validate", store).returncode == 0
    shown = cli("inspect", store).stdout
    for word in ("samples/image", "teachers/dinov2_vits14_reg/patch", "RANDOM INIT", "100%", "(1, 4, 4, 384)",
                 "(5, 4, 4, 384)"):
        assert word in shown


def test_features_match_a_direct_teacher_forward_and_stats_are_exact(cached_store, photos):
    from distillkit.features.inputs import decode_sample
    from distillkit.config.cache import TeacherConfig
    from distillkit.teachers import load_teacher
    import torch

    g = zarr.open_group(str(cached_store), mode="r")
    t = "dinov2_vits14_reg"
    teacher = load_teacher(TeacherConfig(**TINY_TEACHER), (56, 56), 14)
    ids = g["samples/id"][:].tolist()
    uris = g["samples/uri"][:].tolist()
    d = decode_sample(uris[3], (56, 56), {(56, 56)}, {})
    ref = teacher(torch.from_numpy(d.teacher_inputs[(56, 56)][None]))
    np.testing.assert_allclose(g[f"teachers/{t}/patch"][3].astype(np.float32), ref.patch[0].numpy(), atol=2e-2,
                               rtol=1e-2)
    np.testing.assert_array_equal(g["samples/image"][3], d.image)
    assert ids == sorted(ids)
    patch = g[f"teachers/{t}/patch"][:].astype(np.float64)
    valid = g["samples/valid"][:].astype(bool)
    flat = patch[valid].reshape(-1, patch.shape[-1])
    np.testing.assert_allclose(g[f"teachers/{t}/stats/patch_mean"][:], flat.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g[f"teachers/{t}/stats/patch_std"][:], flat.std(0), rtol=1e-4, atol=1e-5)
    cls = g[f"teachers/{t}/cls"][:].astype(np.float64)[valid]
    np.testing.assert_allclose(g[f"teachers/{t}/stats/cls_std"][:], cls.std(0), rtol=1e-4, atol=1e-5)
    assert int(g[f"teachers/{t}/stats/count"][...]) == valid.sum()
    assert g[f"teachers/{t}/patch"].dtype == np.float16
    assert g[f"teachers/{t}/patch"].shards == (4, 4, 4, 384)


def test_bad_inputs_are_recorded_and_skipped(photos, tmp_path):
    src = tmp_path / "mixed"
    shutil.copytree(photos, src)
    good = sorted(src.glob("*.png"))[0].read_bytes()
    (src / "empty.jpg").write_bytes(b"")
    (src / "truncated.png").write_bytes(good[: len(good) // 3])
    (src / "notes.jpg").write_text("this is not an image")
    Image.fromarray(np.full((40, 90), 40000, np.uint16)).save(src / "depth16.png")  # 16-bit: valid
    Image.fromarray(np.zeros((30, 20, 4), np.uint8)).save(src / "transparent.png")  # RGBA: valid
    manifest = tmp_path / "list.txt"
    lines = [str(p) for p in sorted(src.iterdir())] + [str(src / "does_not_exist.jpg")]
    manifest.write_text("\n".join(lines) + "\n")
    store = tmp_path / "mixed.zarr"
    result = run_cache(tiny_cache_config(manifest, store), show_progress=False)
    reasons = {r["uri"].rsplit("/", 1)[-1]: r["reason"] for r in result["rejected"]}
    assert set(reasons) == {"empty.jpg", "truncated.png", "notes.jpg", "does_not_exist.jpg"}
    assert "empty" in reasons["empty.jpg"]
    assert "truncated" in reasons["truncated.png"] or "corrupt" in reasons["truncated.png"]
    assert "not an image" in reasons["notes.jpg"]
    assert "not found" in reasons["does_not_exist.jpg"]
    g = zarr.open_group(str(store), mode="r")
    assert g.attrs["distillkit"]["n_rejected"] == 4 and g.attrs["distillkit"]["n_valid"] == 14
    valid = g["samples/valid"][:].astype(bool)
    patch = g["teachers/dinov2_vits14_reg/patch"][:]
    assert np.isnan(patch[~valid]).all() and np.isfinite(patch[valid]).all()
    uris = g["samples/uri"][:].tolist()
    img16 = g["samples/image"][uris.index(str(src / "depth16.png"))]
    assert np.all(img16 == round(40000 / 257))
    assert np.all(g["samples/image"][uris.index(str(src / "transparent.png"))] == 255)
    from distillkit.stores import summarize, validate_store

    assert validate_store(str(store)) == []
    assert {r["id"].rsplit("/", 1)[-1] for r in summarize(str(store)).rejected} == set(reasons)


def test_reopen_with_other_teacher_config_is_refused(cached_store, photos, tmp_path):
    store = tmp_path / "copy.zarr"
    shutil.copytree(cached_store, store)
    before = read_all(store)
    other_seed = dict(TINY_TEACHER, seed=7)
    with pytest.raises(StoreMismatch, match="checkpoint_sha256"):
        run_cache(tiny_cache_config(photos, store, teachers=[other_seed]), show_progress=False)
    with pytest.raises(StoreMismatch, match="image_hw"):
        run_cache(tiny_cache_config(photos, store, image_size=84), show_progress=False)
    with pytest.raises(StoreMismatch, match="arch_overrides"):
        run_cache(tiny_cache_config(photos, store, teachers=[dict(TINY_TEACHER, overrides={"depth": 3})]),
                  show_progress=False)
    after = read_all(store)
    for k in before:  # nothing was touched
        np.testing.assert_array_equal(before[k], after[k])
    proc = cli("cache", "--source", photos, "--store", store, "--teacher", "dinov2_vits14_reg", "--image-size",
               "56", "--shard-size", "4", check=False)
    assert proc.returncode == 2 and "refusing to mix" in proc.stderr


def test_refuses_to_overwrite_a_foreign_directory(photos, tmp_path):
    foreign = tmp_path / "important"
    foreign.mkdir()
    (foreign / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    (foreign / "data.bin").write_bytes(b"keep me")
    with pytest.raises(NotAStore, match="a Zarr group that distillkit did not create"):
        run_cache(tiny_cache_config(photos, foreign), show_progress=False)
    assert (foreign / "data.bin").read_bytes() == b"keep me"


def test_store_opens_in_xarray_with_named_dims(cached_store):
    import xarray as xr

    t = xr.open_zarr(str(cached_store), group="teachers/dinov2_vits14_reg", consolidated=True)
    assert t["patch"].dims == ("sample", "y", "x", "channel")
    assert t["cls"].dims == ("sample", "channel")
    s = xr.open_zarr(str(cached_store), group="samples")
    assert s["image"].dims == ("sample", "y", "x", "rgb")
    assert s["view"].dims == ("sample", "view_param")
    g = zarr.open_group(str(cached_store), mode="r")
    np.testing.assert_array_equal(t["patch"].isel(sample=2).values, g["teachers/dinov2_vits14_reg/patch"][2])


def test_portrait_and_odd_sized_student_inputs(photos, tmp_path):
    store = tmp_path / "portrait.zarr"
    run_cache(tiny_cache_config(photos, store, image_size="70x42", shard_size=8), show_progress=False)
    g = zarr.open_group(str(store), mode="r")
    assert g["samples/image"].shape[1:] == (70, 42, 3)
    assert g["teachers/dinov2_vits14_reg/patch"].shape[1:3] == (5, 3)
    view = g["samples/view"][:]
    hw = g["samples/source_hw"][:]
    assert np.allclose((view[:, 3] - view[:, 1]) / (view[:, 2] - view[:, 0]), 70 / 42, rtol=1e-3)
    assert (view[:, 0] >= 0).all() and (view[:, 2] <= hw[:, 1] + 1e-3).all()
