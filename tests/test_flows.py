"""The Prefect flows, run for real against a local Prefect API (prefect_test_harness: SQLite + server process)."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from conftest import TINY_TEACHER

pytestmark = pytest.mark.slow


def test_cache_then_train_flows(harness, photos, tmp_path):
    import distillkit_flows  # noqa: F401
    from prefect.artifacts import Artifact
    from distillkit_flows.cache_teachers import cache_teachers
    from distillkit_flows.train_student import train_student

    from distillkit.config.cache import CacheConfig

    from distillkit.training.dune.config import TrainConfig
    from distillkit.stores import validate_store

    store = tmp_path / "flow.zarr"
    cfg = CacheConfig(source=str(photos), store=str(store), teachers=[TINY_TEACHER], image_size=56,
                      shard_size=3, batch_size=3, val_fraction=0.25)
    res = cache_teachers(config=cfg, parts=2)
    assert res["finalize"]["status"] == "complete" and res["samples"] == 12
    assert validate_store(str(store)) == []
    again = cache_teachers(config=cfg)
    assert again["nothing_to_do"] is True
    assert Artifact.get("cache-summary") is not None

    yaml_cfg = tmp_path / "train.yaml"
    yaml_cfg.write_text(f"stores: [{store}]\nout_dir: {tmp_path / 'student'}\nstudent: {{preset: custom, "
                        "embed_dim: 64, depth: 2, num_heads: 2}\nbatch_size: 3\nmax_steps: 6\nnum_workers: 0\n")
    out = train_student(config_file=str(yaml_cfg))
    assert out["steps"] == 6 and (tmp_path / "student" / "checkpoint-last.pt").exists()
    assert Artifact.get("student-eval") is not None
    # explicit parameters override the YAML file
    out2 = train_student(config=TrainConfig(stores=[str(store)], out_dir=str(tmp_path / "student2"),
                                            student={"preset": "custom", "embed_dim": 32, "depth": 1,
                                                     "num_heads": 2}, max_steps=2, num_workers=0, batch_size=3),
                         config_file=str(yaml_cfg))
    assert out2["steps"] == 2 and out2["checkpoint"].startswith(str(tmp_path / "student2"))
    assert zarr.open_group(str(store), mode="r").attrs["distillkit"]["status"] == "complete"


def test_flow_reports_bad_config_clearly(harness, tmp_path):
    from distillkit_flows.cache_teachers import cache_teachers

    bad = tmp_path / "bad.yaml"
    bad.write_text("source: /nowhere\nstore: /tmp/x.zarr\nteachers: [dinov2_vits14_reg]\nshard_size: 0\n")
    with pytest.raises(ValueError, match="shard_size"):
        cache_teachers(config_file=str(bad))


def test_dask_fan_out_is_byte_identical_to_serial(harness, photos, tmp_path):
    from distillkit_flows.cache_teachers import cache_teachers

    from conftest import read_all, tiny_cache_config
    from distillkit.cache import run_cache

    serial = tmp_path / "serial.zarr"
    run_cache(tiny_cache_config(photos, serial, shard_size=2), show_progress=False)
    dask_store = tmp_path / "dask.zarr"
    res = cache_teachers(config=tiny_cache_config(photos, dask_store, shard_size=2), parts=2, runner="dask")
    assert res["finalize"]["status"] == "complete" and res["samples"] == 12
    a, b = read_all(serial), read_all(dask_store)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_retrain_only_when_a_store_changed(harness, photos, tmp_path):
    import json
    import shutil

    from distillkit_flows.retrain_student import retrain_student

    from conftest import tiny_cache_config
    from distillkit.cache import run_cache
    from distillkit.training.dune.config import TrainConfig

    store = tmp_path / "s.zarr"
    run_cache(tiny_cache_config(photos, store), show_progress=False)
    cfg = TrainConfig(stores=[str(store)], out_dir=str(tmp_path / "students"), max_steps=3, num_workers=0,
                      batch_size=3, student={"preset": "custom", "embed_dim": 32, "depth": 1, "num_heads": 2})
    first = retrain_student(config=cfg)
    assert first["changed"] is True and first["runs"] == 1
    again = retrain_student(config=cfg)
    assert again["changed"] is False and "nothing to do" in again["message"]
    # new content: the source gains an image and the same store is cached again: the image is appended (version 2)
    more = tmp_path / "more"
    shutil.copytree(photos, more)
    shutil.copy(sorted(more.glob("*.png"))[0], more / "extra.png")
    grown = run_cache(tiny_cache_config(more, store), show_progress=False)
    assert grown["changes"]["added"] == 1 and grown["finalize"]["version"] == 2
    third = retrain_student(config=cfg)
    assert third["changed"] is True and third["runs"] == 2
    lineage = json.loads((tmp_path / "students" / "lineage.json").read_text())
    assert [r["run"] for r in lineage["runs"]] == [1, 2]
    assert lineage["runs"][1]["init_from"] == lineage["runs"][0]["checkpoint"]
    fp = [r["stores"][str(store)]["source_fingerprint"] for r in lineage["runs"]]
    assert fp[0] != fp[1]
    assert [r["stores"][str(store)]["version"] for r in lineage["runs"]] == [1, 2]


def test_multi_teacher_demo_config_through_both_flows(harness, tmp_path, monkeypatch):
    """DINOv2 + MASt3R encoder + Multi-HMR encoder (small random-init configs) through cache-teachers and
    train-student: the student gets one projector per teacher and is evaluated per teacher."""
    from distillkit_flows.cache_teachers import cache_teachers
    from distillkit_flows.train_student import train_student

    from conftest import REPO
    from distillkit.stores import validate_store

    monkeypatch.setenv("DISTILLKIT_CACHE", str(tmp_path / "cache"))
    store = tmp_path / "multi.zarr"
    res = cache_teachers(config_file=str(REPO / "deploy/configs/cache-multi-demo.yaml"),
                         overrides={"store": str(store), "image_size": 56})
    assert res["finalize"]["status"] == "complete"
    assert validate_store(str(store)) == []
    out = train_student(config={"stores": [str(store)], "out_dir": str(tmp_path / "student"), "max_steps": 8,
                                "batch_size": 8, "num_workers": 0, "projector": "tp",
                                "student": {"preset": "custom", "embed_dim": 48, "depth": 2, "num_heads": 2}})
    assert set(out["final_eval"]) - {"step"} == {"dinov2_vits14_reg", "mast3r_vitl16_enc", "multihmr_vitl14_enc"}
    assert "cos_cls" not in out["final_eval"]["mast3r_vitl16_enc"]  # no CLS target for the 3-D teachers
    assert "cos_cls" in out["final_eval"]["dinov2_vits14_reg"]
