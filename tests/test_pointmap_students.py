"""Scene-specific pointmap students (seed 000): students, loss, exact augmentation, L2/PnP metrics, trainer, flow."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from distillkit.training.pointmap.config import PointmapTrainConfig
from distillkit.scenes.data import SceneData
from distillkit.scenes.synthetic import synthetic_scene
from distillkit.students.pointmap import FAMILIES, build_pointmap_student
from distillkit.students.pointmap.config import PointmapStudentConfig
from distillkit.training.pointmap.augment import View, apply_view, full_view, sample_view, view_indices, view_K
from distillkit.training.pointmap.losses import pointmap_loss
from distillkit.training.pointmap.trainer import train_pointmap_student
from distillkit.training.pointmap.metrics import evaluate_predictions, l2_errors, pnp_pose, pose_errors
from distillkit.training.checkpoint import load_checkpoint

TINY = {
    "cnn": {"kind": "cnn", "cnn_widths": [16, 32, 32], "cnn_strides": [2, 2, 1], "head_widths": [32]},
    "mobilenet": {"kind": "mobilenet", "mobilenet_variant": "mobilenetv3_small_050", "head_widths": [32]},
    "vit": {"kind": "vit", "patch_size": 16, "blocks": 1, "heads": 2, "latent": 32, "dropout": 0.0},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def scene() -> SceneData:
    return synthetic_scene(n_train=8, n_test=4, H=32, W=48, seed=1, hole_fraction=0.1)


def _project(pts: np.ndarray, K: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    w2c = np.linalg.inv(c2w)
    X = pts.reshape(-1, 3) @ w2c[:3, :3].T + w2c[:3, 3]
    uv = X @ K.T
    return (uv[:, :2] / uv[:, 2:]).reshape(*pts.shape[:-1], 2)


# ---------------------------------------------------------------------------------------------------- students
def test_the_registry_names_every_family_module_once():
    """A family is a module of students/pointmap/ named as its kind, with a builder; the config takes exactly those."""
    import importlib
    import pkgutil

    import distillkit.students.pointmap as package

    modules = {m.name for m in pkgutil.iter_modules(package.__path__)} - {"base", "config"}
    assert modules == set(FAMILIES)
    assert all(callable(importlib.import_module(f"{package.__name__}.{kind}").build) for kind in FAMILIES)
    with pytest.raises(ValueError, match="kind") as refused:
        PointmapStudentConfig(kind="not-a-family")
    assert all(repr(kind) in str(refused.value) for kind in FAMILIES)


@pytest.mark.parametrize("kind,sampler,taps", [("cnn", "image", "cell"), ("mobilenet", "image", "cell"),
                                               ("vit", "image", "cell"), ("cnn", "pixel", "cell"),
                                               ("cnn", "pixel", "bilinear")])
def test_student_trains_with_falling_loss(scene, tmp_path, kind, sampler, taps):
    cfg = PointmapTrainConfig(out_dir=str(tmp_path / kind), student=TINY[kind], max_steps=40, batch_size=4,
                              lr=1e-2 if kind == "vit" else 3e-3, sampler=sampler, pixel_taps=taps,
                              pixels_per_step=512, frames_per_step=4, warmup_fraction=0.0, pnp_iterations=50)
    res = train_pointmap_student(cfg, scene)
    losses = [r["loss"] for r in json.loads(open(res["metrics"]).read())["train"]]
    assert len(losses) == 40 and all(math.isfinite(x) for x in losses)
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:3]), losses
    for key in ("checkpoint", "metrics", "loss_curve"):
        assert os.path.exists(res[key])
    ck = load_checkpoint(res["checkpoint"])
    assert {"model", "optimizer", "scheduler", "step", "epoch"} <= set(ck) and ck["step"] == 40
    ev = res["final_eval"]
    assert {"mean_l2", "mean_l2_over_extent", "pct_5cm_5deg", "pct_10cm_10deg", "median_t_cm"} <= set(ev)
    assert res["model"]["size_mb"] > 0
    model = build_pointmap_student(PointmapStudentConfig(**TINY[kind]), scene.hw)
    model.load_state_dict(ck["model"])
    out = model.eval()(torch.zeros(2, 3, *scene.hw))
    assert out.shape == (2, 3, *scene.hw)  # dense pointmap at the input resolution


@pytest.mark.parametrize("taps", ["cell", "bilinear"])
def test_frozen_backbone_uses_feature_buffer(scene, tmp_path, taps):
    cfg = PointmapTrainConfig(out_dir=str(tmp_path), student={**TINY["mobilenet"], "freeze_backbone": True},
                              sampler="pixel", pixel_taps=taps, pixels_per_step=512, max_steps=60, lr=1e-2,
                              warmup_fraction=0.0, eval_pose=False)
    torch.manual_seed(cfg.seed)  # the trainer seeds the same way before building the model
    before = {k: v.clone() for k, v in build_pointmap_student(cfg.student, scene.hw).backbone.state_dict().items()}
    res = train_pointmap_student(cfg, scene)
    ck = load_checkpoint(res["checkpoint"])["model"]
    for k, v in before.items():  # frozen: weights and BN statistics unchanged
        if v.is_floating_point():
            assert torch.equal(ck[f"backbone.{k}"], v), k
    losses = [r["loss"] for r in json.loads(open(res["metrics"]).read())["train"]]
    assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:3]), losses
    assert res["model"]["trainable_params"] < res["model"]["params"]


def test_head_only_training_from_a_checkpoint(scene, tmp_path):
    base = dict(student=TINY["cnn"], batch_size=4, eval_pose=False, lr=3e-3)
    first = train_pointmap_student(PointmapTrainConfig(out_dir=str(tmp_path / "a"), max_steps=10, **base), scene)
    enc = {k: v for k, v in load_checkpoint(first["checkpoint"])["model"].items()
           if k.startswith("encoder.")}
    cfg = PointmapTrainConfig(out_dir=str(tmp_path / "b"), max_steps=10, init_from=first["checkpoint"],
                              sampler="pixel", pixels_per_step=256,
                              **{**base, "student": {**TINY["cnn"], "freeze_backbone": True}})
    second = train_pointmap_student(cfg, scene)
    state = load_checkpoint(second["checkpoint"])["model"]
    assert all(torch.equal(state[k], v) for k, v in enc.items())  # encoder (and BN statistics) untouched
    assert second["model"]["trainable_params"] < second["model"]["params"]


@pytest.mark.parametrize("kind", ["cnn", "mobilenet"])
def test_pixel_prediction_equals_dense_forward(kind):
    torch.manual_seed(0)
    m = build_pointmap_student(PointmapStudentConfig(**TINY[kind]), (40, 56)).eval()
    m.set_scene([1.0, -2.0, 3.0], 2.5)
    last = [mod for mod in m.head.modules() if isinstance(mod, torch.nn.Conv2d)][-1]
    torch.nn.init.normal_(last.weight, std=0.2)
    x = torch.randn(3, 3, 40, 56)
    with torch.no_grad():
        dense = m(x)
        b, y, xx = torch.randint(0, 3, (300,)), torch.randint(0, 40, (300,)), torch.randint(0, 56, (300,))
        at = m.predict_at(m.features(x), b, y, xx, (40, 56))
    assert torch.allclose(at, dense[b, :, y, xx], atol=1e-5)


def test_presets_and_sizes():
    cfg = PointmapTrainConfig(out_dir="x", preset="paper_vit_best")
    s = cfg.student
    assert (cfg.epochs, s.kind, s.latent, s.blocks, s.heads, cfg.target_scale) == (200, "vit", 256, 6, 4, 100.0)
    cfg = PointmapTrainConfig(out_dir="x", preset="paper_vit_best", epochs=3, student={"latent": 64})
    assert (cfg.epochs, cfg.student.latent, cfg.student.blocks) == (3, 64, 6)  # explicit fields win
    with pytest.raises(ValueError, match="per-pixel head"):
        PointmapTrainConfig(out_dir="x", student={"kind": "vit"}, sampler="pixel")
    with pytest.raises(ValueError, match="multiple of patch_size"):
        PointmapTrainConfig(out_dir="x", student={"kind": "vit", "patch_size": 32}, image_size=(96, 100))


# ------------------------------------------------------------------------------------------------------- loss
def test_loss_masks_invalid_and_scales():
    pred = torch.zeros(2, 4, 3, requires_grad=True)
    tgt = torch.ones(2, 4, 3)
    tgt[0, 0] = float("nan")
    w = torch.ones(2, 4)
    w[0, 0] = 0
    loss = pointmap_loss(pred, tgt, w)
    loss.backward()
    assert math.isclose(float(loss.detach()), 1.0, rel_tol=1e-6) and torch.isfinite(pred.grad).all()
    assert float(pred.grad[0, 0].abs().sum()) == 0
    pred = pred.detach()
    assert math.isclose(float(pointmap_loss(pred, tgt, w, target_scale=100.0)), 1e4, rel_tol=1e-6)
    assert math.isclose(float(pointmap_loss(pred, tgt, w, kind="l2")), math.sqrt(3), rel_tol=1e-6)
    wc = w.clone()
    wc[1] = 3.0  # confidence weighting: frame 1 counts 3x
    tgt2 = tgt.clone()
    tgt2[1] = 2.0
    assert math.isclose(float(pointmap_loss(pred, tgt2, wc)), (3 * 1 + 12 * 4) / 15, rel_tol=1e-6)


# ----------------------------------------------------------------------------------------------- augmentation
def _coords(H, W):
    v, u = np.mgrid[:H, :W]
    return u.astype(np.float32), v.astype(np.float32)


def test_augmentation_keeps_image_and_targets_aligned_exactly():
    H, W = 40, 60
    u, v = _coords(H, W)
    image = torch.from_numpy(np.stack((u, v, np.zeros_like(u)), -1).astype(np.uint8))  # pixel coords in the image
    pts = torch.from_numpy(np.stack((u, v, u * 1000 + v), -1))  # ... and in the target
    conf = torch.from_numpy(u * 1000 + v)
    mask = torch.from_numpy((u + v) % 3 == 0)
    gen = torch.Generator().manual_seed(0)
    flips = 0
    for _ in range(40):  # crops at their own size (+ flips): exact, pixel for pixel
        h, w = int(torch.randint(5, H + 1, (1,), generator=gen)), int(torch.randint(5, W + 1, (1,), generator=gen))
        top, left = int(torch.randint(0, H - h + 1, (1,), generator=gen)), int(torch.randint(0, W - w + 1, (1,),
                                                                                              generator=gen))
        vw = View(top, left, h, w, h, w, bool(torch.rand(1, generator=gen) < 0.5))
        flips += vw.flip
        o = apply_view(image, pts, conf, mask, vw)
        img = (o["image"] * 255).round()
        assert torch.equal(img[0], o["pts"][..., 0]) and torch.equal(img[1], o["pts"][..., 1])
        assert torch.equal(o["conf"], o["pts"][..., 2])
        assert torch.equal(o["mask"], (o["pts"][..., 0] + o["pts"][..., 1]) % 3 == 0)
        src_u = torch.arange(w) + left
        expect = src_u.flip(0) if vw.flip else src_u
        assert torch.equal(o["pts"][0, :, 0], expect.float())
    assert 0 < flips < 40
    # rescaled crops: the nearest target is the source pixel nearest to where the image was sampled (<= 0.5 px)
    fimg = torch.from_numpy(np.stack((u, v, np.zeros_like(u)), -1))  # float image: bilinear gives the location
    for _ in range(20):
        vw = sample_view((H, W), (H, W), (0.2, 0.8), 0.5, gen)
        o = apply_view(fimg, pts, None, None, vw)
        assert (o["pts"][..., 0] - o["image"][0]).abs().max() <= 0.5 + 1e-4
        assert (o["pts"][..., 1] - o["image"][1]).abs().max() <= 0.5 + 1e-4
        assert torch.equal(o["pts"][..., 2], o["pts"][..., 0] * 1000 + o["pts"][..., 1])  # points never mixed


def test_augmented_intrinsics_reproject_targets(scene):
    gen = torch.Generator().manual_seed(3)
    pts = torch.from_numpy(scene.pts3d)
    for k in range(4):
        for vw in [sample_view(scene.hw, (24, 36), (0.3, 1.0), 0.5, gen) for _ in range(3)] + \
                [View(2, 3, 20, 30, 20, 30, True), full_view(scene.hw, (64, 96))]:
            o = apply_view(torch.from_numpy(scene.images[k]), pts[k], None, torch.from_numpy(scene.mask[k]), vw)
            Kv = view_K(scene.K[k], vw)
            uv = _project(o["pts"].numpy(), Kv, scene.gt_cam2world[k])
            u, v = _coords(vw.out_h, vw.out_w)
            m = o["mask"].numpy()
            tol = 0.5 * max(vw.out_w / vw.width, vw.out_h / vw.height) + 1e-3
            assert np.abs(uv[..., 0] - u)[m].max() <= tol and np.abs(uv[..., 1] - v)[m].max() <= tol
            if (vw.height, vw.width) == (vw.out_h, vw.out_w):
                assert np.abs(uv[..., 0] - u)[m].max() < 1e-3  # no rescale: exact
                # and PnP on the exact (here mirrored) view recovers the true camera
                est, _ = pnp_pose(o["pts"].numpy(), Kv, m, reproj_px=0.5)
                t, r = pose_errors(est, scene.gt_cam2world[k])
                assert t < 1e-3 and r < 1e-2
    rows, cols = view_indices(View(0, 0, 4, 6, 8, 3, False))
    assert rows.tolist() == [0, 0, 1, 1, 2, 2, 3, 3] and cols.tolist() == [1, 3, 5]  # ties round up


# ---------------------------------------------------------------------------------------------------- metrics
def test_l2_and_pnp_known_answers():
    scene = synthetic_scene(n_train=1, n_test=4, H=72, W=96, seed=3, hole_fraction=0.1)
    test = scene.test_idx
    K, ref = scene.K[test], scene.gt_cam2world[test]
    target, mask = scene.pts3d[test], scene.mask[test]
    perfect = evaluate_predictions(target.copy(), target, mask, K, ref, extent=scene.extent(), iterations=200)
    assert perfect["mean_l2"] == 0 and perfect["mean_l2_over_extent"] == 0
    assert perfect["pct_5cm_5deg"] == perfect["pct_10cm_10deg"] == perfect["pct_2cm_2deg"] == 100.0
    assert perfect["median_t_cm"] < 0.1 and perfect["median_r_deg"] < 0.05 and perfect["pnp_failed"] == 0
    # every point moved by 3 cm: L2 = 0.03 exactly, the camera moves by the same 3 cm and does not rotate
    shifted = target + np.float32([0.0, 0.03, 0.0])
    res = evaluate_predictions(shifted, target, mask, K, ref, iterations=200)
    assert math.isclose(res["mean_l2"], 0.03, rel_tol=1e-4)
    assert abs(res["median_t_cm"] - 3.0) < 0.1 and res["median_r_deg"] < 0.05
    assert res["pct_5cm_5deg"] == 100.0 and res["pct_2cm_2deg"] == 0.0
    # garbage predictions: no frame within thresholds (a PnP failure counts as a miss)
    rng = np.random.default_rng(0)
    junk = rng.normal(0, 3, target.shape).astype(np.float32)
    res = evaluate_predictions(junk, target, mask, K, ref, iterations=50)
    assert res["pct_10cm_10deg"] == 0.0 and res["mean_l2"] > 1
    assert np.allclose(l2_errors(target[:1] + 1, target[:1]), math.sqrt(3))
    assert pose_errors(None, ref[0]) == (math.inf, math.inf)


# ------------------------------------------------------------------------------------------ resume and stores
def test_resume_continues_from_checkpoint(scene, tmp_path):
    base = dict(out_dir=str(tmp_path), student=TINY["cnn"], batch_size=4, eval_pose=False, ckpt_every=3)
    r1 = train_pointmap_student(PointmapTrainConfig(**base, max_steps=4), scene)
    r2 = train_pointmap_student(PointmapTrainConfig(**base, max_steps=7), scene)
    train = json.loads(open(r2["metrics"]).read())["train"]
    assert r1["steps"] == 4 and r2["steps"] == 7 and [r["step"] for r in train] == list(range(1, 8))
    with pytest.raises(ValueError, match="new out_dir"):
        train_pointmap_student(PointmapTrainConfig(**{**base, "student": TINY["vit"]}, max_steps=9), scene)


def test_scenedata_from_arrays(scene):
    """(SceneData.from_store on a real scene store: tests/test_pointmap_store.py.)"""
    pts = scene.pts3d.copy()
    pts[~scene.mask] = np.nan
    d = SceneData.from_arrays(scene.images, pts, scene.K[0], split=None)
    assert d.K.shape == (d.n, 3, 3) and d.notes and len(d.test_idx) == d.n // 8
    assert not d.mask.all() and np.isfinite(d.pts3d).all()  # NaN holes masked and zeroed
    with pytest.raises(ValueError, match="pts3d"):
        SceneData.from_arrays(scene.images, scene.pts3d[:, :-1], scene.K)


# ------------------------------------------------------------------------------------------------------- flow
@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.mark.slow
def test_ablation_flow_2x2(harness, oracle_scene_store, tmp_path):
    import csv

    import distillkit_flows  # noqa: F401
    from prefect.artifacts import Artifact

    from distillkit_flows.ablate_students import ablate_students

    spec = {"store": str(oracle_scene_store), "scene": "office_tall"}  # every run reads the same scene store
    res = ablate_students(config={
        "out_dir": str(tmp_path), "scenes": [spec],
        "base": {"batch_size": 3, "pnp_iterations": 30, "image_size": [32, 24],
                 "student": {**TINY["cnn"], "mobilenet_variant": "mobilenetv3_small_050"}},
        "grid": {"student.kind": ["cnn", "mobilenet"], "epochs": [1, 2]},
        "runs": [{"student.kind": "cnn", "epochs": 1}]})  # a duplicate of a grid run: kept once
    assert res["runs"] == 4 and len(res["rows"]) == 4
    rows = list(csv.DictReader(open(res["csv"])))
    assert len(rows) == 4 and {r["kind"] for r in rows} == {"cnn", "mobilenet"}
    n_train = len(SceneData.from_store(str(oracle_scene_store), "office_tall").train_idx)
    per_epoch = math.ceil(n_train / 3)
    assert sorted(int(r["steps"]) for r in rows) == [per_epoch, per_epoch, 2 * per_epoch, 2 * per_epoch]
    assert {r["scene"] for r in rows} == {"office_tall"}
    assert all(float(r["mean_l2"]) > 0 and r["pct_10cm_10deg"] != "" for r in rows)
    assert os.path.getsize(res["png"]) > 1000
    assert Artifact.get("student-ablation") is not None


@pytest.mark.slow
def test_train_student_flow_selects_pointmap_students(harness, oracle_scene_store, tmp_path):
    import distillkit_flows  # noqa: F401
    from prefect.artifacts import Artifact

    from distillkit.training.pointmap.config import PointmapJobConfig
    from distillkit_flows.train_student import train_student

    res = train_student(config={"task": "pointmap", "store": str(oracle_scene_store), "scenes": ["office_wide"],
                                "out_dir": str(tmp_path), "student": TINY["vit"], "image_size": [48, 64],
                                "max_steps": 6, "batch_size": 4, "pnp_iterations": 30})
    (row,) = res["rows"]
    assert res["task"] == "pointmap" and row["scene"] == "office_wide" and row["kind"] == "vit"
    assert row["steps"] == 6 and row["mean_l2"] > 0
    assert json.loads(open(res["summary_json"]).read()) == res["rows"]
    assert Artifact.get("pointmap-students") is not None
    # a config object (task left at its default) reaches the same branch; the finished run resumes as done
    job = PointmapJobConfig(store=str(oracle_scene_store), scenes=["office_wide"], out_dir=str(tmp_path),
                            student=TINY["vit"], image_size=(48, 64), max_steps=6, batch_size=4, pnp_iterations=30)
    again = train_student(config=job)
    assert again["rows"][0]["steps"] == 6 and again["rows"][0]["mean_l2"] == pytest.approx(row["mean_l2"])


def test_bench_train_pointmap_on_a_scene_store(oracle_scene_store):
    """`bench train --task pointmap` on a given scene store: the image sampler's data phase is timed apart."""
    from distillkit.bench.train import bench_train

    r = bench_train("pointmap", store=str(oracle_scene_store), batch_size=4, steps=3, warmup=1, threads=1)
    assert r["task"] == "pointmap" and len(r["trainer_ms_all"]) == 3
    assert {"data", "forward_loss", "backward", "optimizer", "log"} <= set(r["phases_ms_per_step"])
    assert 0 < r["trainer_vs_bound"] and r["bound_images_per_s"] > 0


def test_unaugmented_batches_equal_apply_view():
    """SceneTensors.batch's batched path (every view the full frame at its own size) gives `apply_view`'s values."""
    from types import SimpleNamespace

    from distillkit.training.pointmap.augment import apply_view, full_view
    from distillkit.training.pointmap.sampling import SceneTensors

    rng = np.random.default_rng(0)
    n, hw = 5, (12, 16)
    data = SimpleNamespace(hw=hw, images=rng.integers(0, 255, (n, *hw, 3), dtype=np.uint8),
                           pts3d=rng.standard_normal((n, *hw, 3)).astype(np.float32),
                           conf=rng.random((n, *hw)).astype(np.float32), mask=rng.random((n, *hw)) > 0.3)
    scene = SceneTensors(data, hw)
    idx = [3, 1, 4]
    got = scene.batch(idx, [full_view(hw, hw)] * 3)
    want = [apply_view(scene.images[i], scene.pts[i], scene.conf[i], scene.mask[i], full_view(hw, hw)) for i in idx]
    for k, v in got.items():
        assert torch.equal(v, torch.stack([w[k] for w in want])), k
