"""Incremental alignment (new frames added to an aligned scene) and bad alignment inputs (issue 12)."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from PIL import Image

from distillkit.geometry import AlignConfig, PairPredictions, align
from distillkit.geometry.incremental import Previous
from distillkit.geometry.metrics import aligned_point_errors
from distillkit.scenes.synthetic import make_scene

pytestmark = pytest.mark.usefixtures("one_torch_thread")
KEYS = ("pred1_pts3d", "pred2_pts3d_in_other_view", "pred1_conf", "pred2_conf")


def _preds(data, idx) -> PairPredictions:
    return PairPredictions(data["edges"][idx], *(np.array(data[k][idx]) for k in KEYS))


@pytest.fixture(scope="module")
def scene():
    return make_scene(9, 96, 128, graph="swin-3-noncyclic", noise=0.01, seed=1)


def test_adding_frames_matches_aligning_from_scratch(scene):
    m = 6
    edges = scene["edges"]
    old = np.flatnonzero((edges < m).all(1))
    new = np.flatnonzero(~(edges < m).all(1))  # only pairs that involve a new frame
    assert all(max(i, j) >= m and abs(i - j) <= 3 for i, j in edges[new])
    first = align(_preds(scene, old))
    both = _preds(scene, np.r_[old, new])  # the old pairs first, then the new frames' pairs
    inc = align(both, AlignConfig(previous=Previous.from_result(first)))
    scratch = align(both)
    dist = aligned_point_errors(inc.pts3d, scratch.pts3d, scene["gt_depth"])
    assert dist.mean() < 1e-4 and abs(inc.loss - scratch.loss) < 1e-6 * scratch.loss
    # it started from the old cameras: its initial loss is below the from-scratch init's
    assert inc.residuals["init_loss_pose_stage"] < scratch.residuals["init_loss_pose_stage"]
    np.testing.assert_allclose(inc.cam2world[:m, :3, :3] @ np.swapaxes(first.cam2world[:m, :3, :3], 1, 2),
                               np.broadcast_to(np.eye(3), (m, 3, 3)), atol=2e-3)


def test_bad_inputs_are_errors_naming_scene_and_frames(scene):
    ids = [f"f{k}" for k in range(9)]
    cfg = AlignConfig(scene="office", frame_ids=ids)
    edges = scene["edges"]
    # two groups of frames with no pair between them
    split = np.flatnonzero(((edges < 4).all(1)) | ((edges >= 4).all(1)))
    with pytest.raises(ValueError, match=r"scene office: the pair graph is not connected \(2 parts: \[frame f4, "
                       r"frame f5, frame f6, frame f7, frame f8\]; \[frame f0, frame f1, frame f2, frame f3\]"):
        align(_preds(scene, split), cfg)
    for key, value, what in (("pred1_conf", np.nan, "NaN/Inf value"), ("pred2_pts3d_in_other_view", np.inf,
                                                                     "NaN/Inf value")):
        bad = _preds(scene, np.arange(len(edges)))
        arr = bad.conf1 if key == "pred1_conf" else bad.pts2
        arr[3].flat[7] = value
        i, j = edges[3]
        with pytest.raises(ValueError, match=rf"scene office: pair \(frame f{i}, frame f{j}\) \(edge 3\): 1 {what}"):
            align(bad, cfg)
    bad = _preds(scene, np.arange(len(edges)))
    bad.conf1[5] = 0.0
    bad.conf2[5] = 0.0
    i, j = edges[5]
    with pytest.raises(ValueError, match=rf"pair \(frame f{i}, frame f{j}\) \(edge 5\): all confidences are zero"):
        align(bad, cfg)
    with pytest.raises(ValueError, match="no pairs: global alignment needs at least two frames"):
        PairPredictions(np.zeros((0, 2)), *(np.zeros((0, 4, 4, 3)),) * 2, *(np.zeros((0, 4, 4)),) * 2)


def test_pipeline_bad_inputs_write_nothing(tmp_path):
    from distillkit.config.scenes import SceneCacheConfig
    from distillkit.scenes import pipeline
    from distillkit.scenes.synthetic import write_12scenes

    (tmp_path / "photos" / "solo").mkdir(parents=True)
    Image.fromarray(np.full((96, 128, 3), 90, np.uint8)).save(tmp_path / "photos" / "solo" / "only.jpg")
    cfg = SceneCacheConfig(source=str(tmp_path / "photos"), store=str(tmp_path / "a.zarr"), image_size=64,
                           device="cpu", predictor="gt-depth")
    with pytest.raises(ValueError, match=r"scene solo: a single image \(frame only.jpg\)"):
        pipeline.prepare(cfg)
    assert not (tmp_path / "a.zarr").exists()
    # stored pairs with a NaN: re-aligning is an error naming the pair; the stored alignment is untouched
    write_12scenes(tmp_path / "ds" / "office" / "synth", seed=3, n_frames=5, color_hw=(96, 128), depth_hw=(48, 64),
                   n_inf=0, n_holes=0)
    cfg = SceneCacheConfig(source=str(tmp_path / "ds"), store=str(tmp_path / "s.zarr"), image_size=64, device="cpu",
                           predictor="gt-depth", graph="swin-2-noncyclic", frames_per_shard=4,
                           align={"pose_pixels": 512, "max_iters": 10})
    pipeline.run_scenes(cfg)
    g = zarr.open_group(cfg.store, mode="r+")
    base = "scenes/office_synth"
    before = g[f"{base}/pts3d"][:], dict(g[base].attrs["alignment"])
    pts = g[f"{base}/pairs/pts2"][2]
    pts[1, 2, 0] = np.nan
    g[f"{base}/pairs/pts2"][2] = pts
    ids = [str(x) for x in g[f"{base}/frame_id"][:]]
    i, j = g[f"{base}/pairs/edges"][2]
    with pytest.raises(ValueError, match=rf"scene office_synth: pair \(frame {ids[i]}, frame {ids[j]}\) \(edge 2\): "
                       r"1 NaN/Inf value\(s\) in pts2"):
        pipeline.realign(cfg.store, "office_synth", {"known_poses": False})
    g = zarr.open_group(cfg.store, mode="r")
    np.testing.assert_array_equal(g[f"{base}/pts3d"][:], before[0])
    assert dict(g[base].attrs["alignment"]) == before[1] and g["progress/scene_done"][0] == 1


def test_cli_add_frames_to_an_aligned_scene(tmp_path):
    import json

    from typer.testing import CliRunner

    from distillkit.cli import app
    from distillkit.config.scenes import SceneCacheConfig
    from distillkit.scenes import pipeline
    from distillkit.scenes.sources import discover
    from distillkit.scenes.synthetic import write_12scenes
    from distillkit.stores import validate_store

    write_12scenes(tmp_path / "ds" / "office" / "synth", seed=5, n_frames=8, color_hw=(96, 128), depth_hw=(48, 64),
                   n_inf=0, n_holes=0)
    cfg = SceneCacheConfig(source=str(tmp_path / "ds"), store=str(tmp_path / "s.zarr"), image_size=64, device="cpu",
                           predictor="gt-depth", graph="swin-2-noncyclic", max_frames=5, frames_per_shard=4,
                           align={"known_poses": False, "known_intrinsics": False, "pose_pixels": 512})
    pipeline.run_scenes(cfg)
    g = zarr.open_group(cfg.store, mode="r")
    base = "scenes/office_synth"
    old_ids = [str(x) for x in g[f"{base}/frame_id"][:]]
    old_edges = g[f"{base}/pairs/edges"][:]
    old_pairs = g[f"{base}/pairs/pts1"][:]
    new = [f.frame_id for f in discover(cfg.source)[0].frames if f.frame_id not in old_ids]
    assert len(old_ids) == 5 and len(new) == 3
    args = ["align", cfg.store, "--scene", "office_synth", "--json"] + sum((["--add", x] for x in new), [])
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    res = json.loads(r.output[r.output.index("{"):])  # after the log lines
    assert res["added"] == new and res["n_frames"] == 8
    g = zarr.open_group(cfg.store, mode="r")
    edges = g[f"{base}/pairs/edges"][:]
    assert res["n_edges"] == len(edges) == len(old_edges) + res["new_edges"]
    np.testing.assert_array_equal(edges[:len(old_edges)], old_edges)  # old pairs kept, not recomputed
    np.testing.assert_array_equal(g[f"{base}/pairs/pts1"][:len(old_edges)], old_pairs)
    assert all(max(e) >= 5 for e in edges[len(old_edges):].tolist())  # new pairs all involve a new frame
    assert [str(x) for x in g[f"{base}/frame_id"][:]] == old_ids + new and g["progress/scene_done"][0] == 1
    assert validate_store(cfg.store) == []
    inc = g[f"{base}/pts3d"][:]
    (again,) = pipeline.realign(cfg.store, "office_synth")  # from scratch, the same pairs
    scratch = zarr.open_group(cfg.store, mode="r")[f"{base}/pts3d"][:]
    assert again["runs"] == 3
    assert aligned_point_errors(inc, scratch, g[f"{base}/gt_depth"][:]).mean() < 1e-4
    r = CliRunner().invoke(app, ["align", cfg.store, "--scene", "office_synth", "--add", new[0]])
    assert r.exit_code != 0 and "already in the scene" in r.output
