"""Pointmap students on a real DUSt3R scene store: SceneData.from_store, `distillkit train --task pointmap`,
`distillkit show --scene --checkpoint`, and the config plumbing that selects the task."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from PIL import Image
from typer.testing import CliRunner

from distillkit.cli import app
from distillkit.training.dune.config import TrainConfig
from distillkit.training.tasks import load_train_config
from distillkit.training.pointmap.config import PointmapJobConfig
from distillkit.scenes.data import SceneData, aligned_scenes
from distillkit.scenes import store as st
from distillkit.scenes.quality import gt_world_points

TINY_CNN = {"kind": "cnn", "cnn_widths": [16, 32, 32], "cnn_strides": [2, 2, 1], "head_widths": [32]}
runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_from_store_reads_the_aligned_scene(oracle_scene_store):
    assert aligned_scenes(str(oracle_scene_store)) == ["office_tall", "office_wide"]
    g = zarr.open_group(str(oracle_scene_store), mode="r")
    for name in ("office_wide", "office_tall"):
        d = SceneData.from_store(str(oracle_scene_store), name)
        b = f"scenes/{name}"
        assert d.n == g[f"{b}/image"].shape[0] and d.hw == g[f"{b}/image"].shape[1:3]
        np.testing.assert_array_equal(d.images, g[f"{b}/image"][:])
        np.testing.assert_array_equal(d.split, g[f"{b}/split"][:].astype(np.int8))
        np.testing.assert_array_equal(d.K, g[f"{b}/intrinsics"][:])
        assert d.eval_poses[1] == "gt" and (d.split == 1).any() and (d.split == 0).any()
        # the stored pointmaps are the true world points (oracle pairs + known poses), masked where depth is 0
        ref = gt_world_points(g[f"{b}/gt_depth"][:], g[f"{b}/gt_intrinsics"][:], d.gt_cam2world)
        valid = d.mask & (g[f"{b}/gt_depth"][:] > 0)
        assert valid.mean() > 0.8
        assert np.abs(d.pts3d - ref)[valid].max() < 1e-3
    tall = SceneData.from_store(str(oracle_scene_store), "office_tall")
    assert tall.hw[0] > tall.hw[1]  # portrait frames stay portrait


def test_from_store_errors_name_the_problem(oracle_scene_store, tmp_path, cached_store):
    with pytest.raises(ValueError, match="scene 'nope' not in the store"):
        SceneData.from_store(str(oracle_scene_store), "nope")
    with pytest.raises(ValueError, match="not a readable DUSt3R scene store"):
        SceneData.from_store(str(tmp_path / "missing.zarr"), "x")
    with pytest.raises(ValueError, match="not a readable DUSt3R scene store"):
        SceneData.from_store(str(cached_store), "x")  # a teacher-feature store
    import shutil

    copy = tmp_path / "copy.zarr"
    shutil.copytree(oracle_scene_store, copy)
    st.set_flag(zarr.open_group(str(copy), mode="r+"), "scene_done", 0, 0)
    with pytest.raises(ValueError, match="is not aligned yet"):
        SceneData.from_store(str(copy), "office_tall")
    assert aligned_scenes(str(copy)) == ["office_wide"]


def test_task_selects_the_config_model(tmp_path, oracle_scene_store):
    cfg_file = tmp_path / "pm.yaml"
    cfg_file.write_text(f"task: pointmap\nstore: {oracle_scene_store}\nout_dir: {tmp_path}\n"
                        f"student: {{preset: paper_vit}}\nepochs: 5\n")
    job = load_train_config(cfg_file)
    assert isinstance(job, PointmapJobConfig) and job.student.kind == "vit" and job.student.latent == 256
    one = job.scene_config("office_wide")
    assert one.out_dir == f"{tmp_path}/office_wide" and one.epochs == 5 and one.student == job.student
    best = load_train_config(None, task="pointmap", store="s", out_dir="o", preset="paper_vit_best")
    assert (best.student.kind, best.student.latent, best.student.blocks, best.student.heads, best.epochs,
            best.target_scale) == ("vit", 256, 6, 4, 200, 100)
    assert isinstance(load_train_config(None, stores=["a.zarr"], out_dir="x"), TrainConfig)
    with pytest.raises(ValueError, match="unknown training task 'nerf'"):
        load_train_config(None, task="nerf", out_dir="x")
    with pytest.raises(ValueError, match=f"config file {cfg_file}: .*latent"):
        load_train_config(cfg_file, student={"kind": "vit", "latent": 30, "heads": 4})


def test_cli_train_pointmap_every_scene_then_show(oracle_scene_store, tmp_path):
    out = tmp_path / "pm"
    cfg = tmp_path / "pm.yaml"
    cfg.write_text(json.dumps({"student": TINY_CNN, "lr": 3e-3, "batch_size": 4, "warmup_fraction": 0.0,
                               "pnp_iterations": 50}))
    r = runner.invoke(app, ["train", "--task", "pointmap", "--store", str(oracle_scene_store), "--out", str(out),
                            "--max-steps", "30", "--device", "cpu", "-c", str(cfg)])
    assert r.exit_code == 0, r.output
    rows = json.loads((out / "summary.json").read_text())
    assert [x["scene"] for x in rows] == ["office_tall", "office_wide"]
    assert (out / "summary.csv").read_text().count("\n") == 3
    for row in rows:
        m = json.loads((out / row["scene"] / "metrics.json").read_text())
        losses = [x["loss"] for x in m["train"]]
        assert len(losses) == 30 and np.mean(losses[-5:]) < 0.7 * np.mean(losses[:3])
        assert row["kind"] == "cnn" and row["steps"] == 30 and row["pose_reference"] == "gt"
        assert row["mean_l2"] > 0 and 0 <= row["pct_10cm_10deg"] <= 100
        assert row["frames_test"] == int((SceneData.from_store(str(oracle_scene_store), row["scene"]).split == 1)
                                         .sum())

    # the student beside the teacher on every test frame: the error shown is the trainer's held-out error
    show_dir = tmp_path / "show"
    ck = out / "office_wide" / "checkpoint-last.pt"
    r = runner.invoke(app, ["show", str(oracle_scene_store), "--scene", "office_wide", "--checkpoint", str(ck),
                            "--out", str(show_dir), "--n", "10"])
    assert r.exit_code == 0, r.output
    with Image.open(show_dir / "overview.png") as overview:
        assert overview.size[0] > 500
    from distillkit.training.pointmap.plots import show_student

    res = show_student(str(oracle_scene_store), "office_wide", ck, tmp_path / "show2", n_frames=10)
    m = json.loads((out / "office_wide" / "metrics.json").read_text())
    np.testing.assert_allclose([f["mean_l2"] for f in res["frames"]], m["final"]["per_frame_l2"], rtol=1e-4)
    d = SceneData.from_store(str(oracle_scene_store), "office_wide")
    assert [f["frame"] for f in res["frames"]] == d.test_idx.tolist()
    student_png = np.asarray(Image.open(show_dir / f"frame{d.test_idx[0]:05d}_student.png"))
    # a titled figure around the frame (with its colour key), not the bare frame
    assert student_png.shape[0] >= d.hw[0] and student_png.shape[1] >= d.hw[1] and student_png.std() > 0

    # clear errors
    r = runner.invoke(app, ["train", "--task", "pointmap", "--store", str(oracle_scene_store), "--out", str(out),
                            "--scene", "nope"])
    assert r.exit_code == 2 and "not aligned scenes of the store" in r.output
    r = runner.invoke(app, ["train", "--task", "pointmap", "--store", str(oracle_scene_store), "--out", str(out),
                            "--preset", "vit_small"])
    assert r.exit_code == 2 and "--preset do not apply to --task pointmap" in r.output
    r = runner.invoke(app, ["show", str(oracle_scene_store), "--scene", "office_wide", "--checkpoint",
                            str(tmp_path / "none.pt"), "--out", str(show_dir)])
    assert r.exit_code == 2 and "no such checkpoint" in r.output


def test_example_deploy_config_is_a_pointmap_job():
    from pathlib import Path

    job = load_train_config(Path(__file__).resolve().parents[1] / "deploy" / "configs" / "pointmap-students.yaml")
    assert isinstance(job, PointmapJobConfig) and job.student.kind == "cnn" and job.crop_scale == (0.5, 1.0)


def test_store_without_test_frames_and_mismatched_checkpoint(oracle_scene_store, tmp_path):
    import shutil

    copy = tmp_path / "nosplit.zarr"
    shutil.copytree(oracle_scene_store, copy)
    g = zarr.open_group(str(copy), mode="r+")
    g["scenes/office_wide/split"][:] = 0  # e.g. an image-folder dataset: no test sequence
    d = SceneData.from_store(str(copy), "office_wide", test_every=4)
    assert d.test_idx.tolist() == list(range(3, d.n, 4)) and any("held out" in n for n in d.notes)

    out = tmp_path / "pm"
    r = runner.invoke(app, ["train", "--task", "pointmap", "--store", str(copy), "--scene", "office_wide",
                            "--student", "cnn", "--image-size", "24x32", "--max-steps", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    row = json.loads((out / "summary.json").read_text())[0]
    assert row["frames_test"] == len(range(7, d.n, 8)) and row["mean_l2"] > 0  # default test_every = 8
    ck = out / "office_wide" / "checkpoint-last.pt"
    r = runner.invoke(app, ["show", str(copy), "--scene", "office_tall", "--checkpoint", str(ck),
                            "--out", str(tmp_path / "s")])
    assert r.exit_code == 2 and "student of scene 'office_wide', not 'office_tall'" in r.output
    r = runner.invoke(app, ["train", "--task", "pointmap", "--store", str(tmp_path / "nowhere.zarr"),
                            "--out", str(out)])
    assert r.exit_code == 2 and "not a readable DUSt3R scene store" in r.output
    # a second run on the other scene adds its row to the summary instead of replacing the file
    r = runner.invoke(app, ["train", "--task", "pointmap", "--store", str(copy), "--scene", "office_tall",
                            "--student", "cnn", "--image-size", "24x32", "--max-steps", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert [x["scene"] for x in json.loads((out / "summary.json").read_text())] == ["office_wide", "office_tall"]


def test_cli_student_presets_and_flow_config_objects(tmp_path):
    from distillkit.training.pointmap.task import student_overrides
    from distillkit.training.tasks import train_config_model
    from distillkit_flows.common import resolve_config

    yaml_file = tmp_path / "pm.yaml"
    yaml_file.write_text("task: pointmap\nstore: s.zarr\nout_dir: o\nstudent: {preset: small_cnn}\nepochs: 250\n")
    best = load_train_config(yaml_file, **student_overrides("paper_vit_best", {"epochs": None}))
    assert (best.student.kind, best.student.latent, best.epochs, best.target_scale) == ("vit", 256, 200, 100)
    mine = load_train_config(yaml_file, epochs=7, **student_overrides("paper_vit_best", {"epochs": 7}))
    assert mine.epochs == 7 and mine.student.kind == "vit"
    mob = load_train_config(yaml_file, **student_overrides("mobilenet", {}))
    assert mob.student.kind == "mobilenet" and mob.epochs == 250
    with pytest.raises(ValueError, match=f"config file {yaml_file}: task: unknown training task 'nerf'"):
        yaml_file.write_text("task: nerf\n")
        load_train_config(yaml_file)
    # a config object changed after construction (nested too) reaches the flow as it is now
    job = PointmapJobConfig(store="s.zarr", out_dir="o")
    job.student.kind = "vit"
    assert resolve_config(train_config_model, job, None).student.kind == "vit"
    assert isinstance(resolve_config(train_config_model, {"stores": ["a"], "out_dir": "o"}, None), TrainConfig)
