"""Default alignment settings reach the exact full-resolution optimum (issue 12): the pose stage on a pixel
sub-grid, then full-resolution Newton steps with the depths eliminated (``geometry/refine.py``)."""

from __future__ import annotations

import numpy as np
import pytest

from distillkit.geometry import AlignConfig, PairPredictions, align
from distillkit.geometry import system as system_mod
from distillkit.geometry.metrics import aligned_point_errors, relative_rotation_errors
from distillkit.scenes.synthetic import make_scene

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def scene():
    """3 views of 192x256 (49 152 pixels each, 12x the pose stage's 4096), complete symmetric graph."""
    data = make_scene(3, 192, 256, graph="complete", noise=0.01, seed=2)
    preds = PairPredictions.from_mapping(data)
    exact = align(preds, AlignConfig(pose_pixels=None, tol=1e-10, max_iters=10))
    return data, preds, exact


def _errors(res, exact, data):
    dist = aligned_point_errors(res.pts3d, exact.pts3d, data["gt_depth"]).mean()
    rot = relative_rotation_errors(res.cam2world, data["gt_cam2world"])
    return float(dist), rot


def test_default_settings_reach_the_exact_optimum(scene):
    data, preds, exact = scene
    res = align(preds)  # defaults: 4096 pose-stage pixels, then the fine stage
    assert res.residuals["pose_stage_pixels"] < preds.hw[0] * preds.hw[1] and res.residuals["fine_iterations"] >= 1
    dist, rot = _errors(res, exact, data)
    rot_exact = relative_rotation_errors(exact.cam2world, data["gt_cam2world"])
    assert dist <= 2e-5
    assert rot.mean() <= 1.1 * rot_exact.mean() and rot.max() <= 1.1 * rot_exact.max()
    assert abs(res.loss - exact.loss) <= 1e-6 * exact.loss
    assert np.max(np.abs(res.focals / exact.focals - 1)) < 1e-4
    # without the fine stage the sub-grid optimum is measurably off: the check above can fail
    coarse = align(preds, AlignConfig(fine_iters=0))
    dist0, _ = _errors(coarse, exact, data)
    assert dist0 > 3 * dist and coarse.loss > res.loss


def test_sparse_reduced_system_matches_the_dense_one(monkeypatch):
    preds = PairPredictions.from_mapping(make_scene(5, 48, 64, graph="swin-2", noise=0.01, seed=4))
    cfg = AlignConfig(pose_pixels=1024, fine_iters=1, fine_tol=0.0)
    dense = align(preds, cfg)
    monkeypatch.setattr(system_mod, "DENSE_MAX", 0)  # every system sparse (the path of 200-image scenes)
    sparse = align(preds, cfg)
    assert sparse.iterations == dense.iterations
    np.testing.assert_allclose(sparse.pts3d, dense.pts3d, atol=1e-5 * float(np.median(dense.depth)))
    assert abs(sparse.loss - dense.loss) <= 1e-9 * dense.loss
