"""Relocalisation by the ACE / DSAC* protocol: known answers (exact scene coordinates, a rigidly moved prediction),
the cell-to-pixel mapping of subsampled outputs, and `distillkit eval-reloc` on a real scene store."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from distillkit.cli import app
from distillkit.scenes.data import SceneData
from distillkit.scenes.synthetic import synthetic_scene
from distillkit.students.pointmap.cnn import VanillaCNN
from distillkit.training.pointmap.config import PointmapTrainConfig
from distillkit.training.pointmap.evaluate import reloc_predictions
from distillkit.training.pointmap.reloc import PROTOCOLS, cell_pixels, dense_samples, dsac_pose, evaluate_reloc
from distillkit.training.pointmap.trainer import train_pointmap_student

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()
BUCKETS = ("pct_10cm_5deg", "pct_5cm_5deg", "pct_2cm_2deg", "pct_1cm_1deg")


@pytest.fixture(scope="module")
def scene() -> SceneData:
    """96 x 128 frames (the students' resolution), exact world points and poses, a few masked-out blocks."""
    return synthetic_scene(n_train=1, n_test=5, H=96, W=128, seed=3, hole_fraction=0.05)


def _rotation(axis, deg: float) -> np.ndarray:
    import cv2

    a = np.asarray(axis, np.float64)
    return cv2.Rodrigues(a / np.linalg.norm(a) * math.radians(deg))[0]


@pytest.mark.parametrize("ransac", ["dsac", "opencv"])
def test_exact_scene_coordinates_relocalise_within_1cm_1deg(scene, ransac):
    t = scene.test_idx
    res = evaluate_reloc(scene.pts3d[t], scene.K[t], scene.gt_cam2world[t], scene.pts3d[t], scene.mask[t],
                         ransac=ransac)
    assert res["frames"] == 5 and res["pnp_failed"] == 0
    assert all(res[k] == 100.0 for k in BUCKETS), res
    assert res["median_t_cm"] < 0.01 and res["median_r_deg"] < 0.01 and res["mean_l2"] == 0
    # the protocol at 96 px: ACE's 10 px / 100 px at 480 px are 2 px / 20 px; ACE's 8 px spacing is 1.6 px -> 2
    assert (res["inlier_px"], res["max_reproj_px"], res["stride_px"]) == (2.0, 20.0, 2)
    assert res["points_per_frame"] == 48 * 64 and min(res["per_frame_inliers"]) > 0.9 * 48 * 64


def test_a_rigidly_moved_prediction_is_the_reported_pose_error(scene):
    t = scene.test_idx
    pts = scene.pts3d[t].astype(np.float64)
    # shifted by 3 cm: every camera is 3 cm off, not rotated -> inside 5 cm/5 deg, outside 2 cm/2 deg
    shift = np.array([0.02, -0.02, 0.01])
    res = evaluate_reloc((pts + shift).astype(np.float32), scene.K[t], scene.gt_cam2world[t])
    np.testing.assert_allclose(res["per_frame_t_err"], np.linalg.norm(shift), rtol=1e-3)
    assert max(res["per_frame_r_err"]) < 0.01
    assert (res["pct_10cm_5deg"], res["pct_5cm_5deg"], res["pct_2cm_2deg"], res["pct_1cm_1deg"]) == (100, 100, 0, 0)
    assert res["median_t_cm"] == pytest.approx(3.0, abs=0.01)
    # rotated by 3 deg about each camera's centre: the centre stays, the rotation error is 3 deg
    R = _rotation([0.3, 1.0, -0.2], 3.0)
    moved = []
    for k, i in enumerate(t):
        c = scene.gt_cam2world[i, :3, 3]
        moved.append((pts[k] - c) @ R.T + c)
    res = evaluate_reloc(np.float32(moved), scene.K[t], scene.gt_cam2world[t])
    np.testing.assert_allclose(res["per_frame_r_err"], 3.0, atol=1e-3)
    assert max(res["per_frame_t_err"]) < 1e-3
    assert (res["pct_5cm_5deg"], res["pct_2cm_2deg"]) == (100, 0) and res["median_r_deg"] == pytest.approx(3, abs=1e-3)


def test_ransac_rejects_outliers_and_garbage_misses(scene):
    t = scene.test_idx[:2]
    rng = np.random.default_rng(0)
    pts = scene.pts3d[t].copy()
    bad = rng.random(pts.shape[:3]) < 0.4  # 40 % of the points anywhere in the room
    pts[bad] = rng.uniform(-3, 3, (int(bad.sum()), 3))
    res = evaluate_reloc(pts, scene.K[t], scene.gt_cam2world[t])
    assert res["pct_1cm_1deg"] == 100.0
    junk = rng.normal(0, 3, pts.shape).astype(np.float32)
    res = evaluate_reloc(junk, scene.K[t], scene.gt_cam2world[t])
    assert res["pct_10cm_5deg"] == 0.0 and res["median_t_cm"] > 10
    assert dsac_pose(np.full((2, 2, 3), np.nan), np.zeros((2, 2, 2)), scene.K[0]) == (None, 0)


def test_subsampled_cells_sit_at_their_pixel_centres():
    """A stride-8 student: its dense output is the bilinear upsampling of its cells, which puts cell i at pixel
    (i + 0.5) 8 - 0.5 (DSAC*'s 8 i + 4 is half a pixel off): interpolating the cells placed there gives the dense
    output back exactly."""
    from scipy.interpolate import RegularGridInterpolator

    torch.manual_seed(0)
    model = VanillaCNN([8, 8, 8], [2, 2, 2], [8]).eval()
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        dense = model(x)[0].permute(1, 2, 0).numpy()
        cells = model.to_world(model.head(model.features(x)))[0].permute(1, 2, 0).numpy()
    uv = cell_pixels(*cells.shape[:2], 8)
    f = RegularGridInterpolator((uv[:, 0, 1], uv[0, :, 0]), cells)
    v, u = np.mgrid[4:44, 4:60]  # between the outermost cell centres (3.5 ... 59.5)
    np.testing.assert_allclose(f(np.stack((v, u), -1)), dense[4:44, 4:60], atol=1e-5)
    wrong = RegularGridInterpolator((uv[:, 0, 1] + 0.5, uv[0, :, 0] + 0.5), cells)
    assert np.abs(wrong(np.stack((v, u), -1)) - dense[4:44, 4:60]).max() > 1e-3
    # dense sampling keeps each point at its own pixel
    pts, px = dense_samples(np.arange(5 * 7 * 3.0).reshape(5, 7, 3), 3)
    assert pts.shape == (2, 2, 3) and px[1, 0].tolist() == [1.0, 4.0] and pts[1, 0, 0] == (4 * 7 + 1) * 3
    assert PROTOCOLS["ace"].at_height(480)["stride"] == 8 and cell_pixels(1, 2, 8)[0, 1].tolist() == [11.5, 3.5]


def test_store_ground_truth_and_eval_reloc_cli(oracle_scene_store, tmp_path):
    store = str(oracle_scene_store)
    data = SceneData.from_store(store, "office_wide")
    test = data.test_idx
    # the oracle store's targets are the exact scene coordinates: relocalised against the dataset's poses
    row = reloc_predictions(data, True, data.pts3d[test], data.K[test], data.pts3d[test], data.mask[test])
    assert row["ground_truth"] == "dslam" and row["pct_1cm_1deg"] == 100.0 and row["mean_l2"] == 0
    aligned = reloc_predictions(data, True, data.pts3d[test], data.K[test], data.pts3d[test], data.mask[test],
                                reference="aligned")
    assert aligned["ground_truth"] == "aligned" and "fixed to the dataset's poses" in aligned["ground_truth_note"]
    # free poses: the aligned frame is registered to the dataset's on the training cameras
    s, R = 2.0, _rotation([1, 2, 3], 40.0)
    moved = SceneData.from_arrays(images=data.images, pts3d=data.pts3d, K=data.K, split=data.split,
                                  gt_cam2world=data.gt_cam2world, cam2world=data.cam2world, name="moved")
    moved.cam2world = data.cam2world.copy()
    moved.cam2world[:, :3, 3] = s * data.cam2world[:, :3, 3] @ R.T + 1.0
    pred = (s * data.pts3d[test].astype(np.float64) @ R.T + 1.0).astype(np.float32)
    row = reloc_predictions(moved, False, pred, data.K[test], pred, data.mask[test])
    assert row["ground_truth"] == "dslam" and "registered" in row["ground_truth_note"]
    assert row["pct_1cm_1deg"] == 100.0
    with pytest.raises(ValueError, match="reference must be one of"):
        reloc_predictions(data, True, pred, data.K[test], pred, data.mask[test], reference="sfm")

    # a trained (tiny) student end to end: one run folder with a checkpoint per scene
    out = tmp_path / "pm"
    for name in ("office_wide", "office_tall"):
        d = SceneData.from_store(store, name)
        cfg = PointmapTrainConfig(out_dir=str(out / name), max_steps=6, batch_size=4, device="cpu", eval_pose=False,
                                  student={"kind": "cnn", "cnn_widths": [8, 16], "cnn_strides": [2, 2],
                                           "head_widths": [16]})
        train_pointmap_student(cfg, d)
    r = runner.invoke(app, ["eval-reloc", "--store", store, "--checkpoint", str(out), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert [x["scene"] for x in res["scenes"]] == ["office_tall", "office_wide"]
    for x in res["scenes"]:
        assert x["ground_truth"] == "dslam" and x["frames"] == len(SceneData.from_store(store, x["scene"]).test_idx)
        assert all(0 <= x[k] <= 100 for k in BUCKETS) and x["mean_l2"] > 0 and "per_frame_t_err" not in x
    assert res["mean"]["frames"] == sum(x["frames"] for x in res["scenes"])
    assert res["mean"]["mean_l2"] == pytest.approx(np.mean([x["mean_l2"] for x in res["scenes"]]))
    r = runner.invoke(app, ["eval-reloc", "--store", store, "--checkpoint", str(out / "office_wide"),
                            "--reference", "aligned", "--ransac", "opencv"])
    assert r.exit_code == 0 and "office_wide" in r.output and "DUSt3R-aligned" in r.output, r.output
    r = runner.invoke(app, ["eval-reloc", "--store", store, "--checkpoint", str(tmp_path / "nope.pt")])
    assert r.exit_code == 2 and "no such checkpoint or run folder" in r.output
    r = runner.invoke(app, ["eval-reloc", "--store", store, "--checkpoint", str(out), "--protocol", "dsac++"])
    assert r.exit_code == 2 and "protocol must be one of" in r.output
