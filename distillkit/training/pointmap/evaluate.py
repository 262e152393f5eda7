"""A trained pointmap student: load it from its checkpoint, predict frames, held-out metrics (the trainer's
evaluation and `distillkit show --scene S --checkpoint C`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from distillkit.images import normalise
from distillkit.students.pointmap import build_pointmap_student
from distillkit.training.checkpoint import CKPT_NAME, load_checkpoint
from distillkit.training.pointmap.augment import full_view, view_K
from distillkit.training.pointmap.config import PointmapTrainConfig
from distillkit.training.pointmap.metrics import evaluate_predictions, l2_errors
from distillkit.training.pointmap.sampling import SceneTensors


@torch.no_grad()
def predict_frames(model, scene: SceneTensors, idx, device: torch.device, batch: int = 8) -> dict[str, np.ndarray]:
    """Predictions for frames `idx` at the training resolution (full frame resized), with the targets, masks and
    intrinsics of that resolution."""
    was = model.training
    model.eval()
    preds, pts, masks, Ks = [], [], [], []
    v = full_view(scene.hw, scene.out_hw)
    for s in range(0, len(idx), batch):
        ids = list(idx[s:s + batch])
        b = scene.batch(ids, [v] * len(ids))
        preds.append(model(normalise(b["image"].to(device))).permute(0, 2, 3, 1).float().cpu().numpy())
        pts.append(b["pts"].numpy())
        masks.append(b["mask"].numpy())
        Ks += [view_K(scene.data.K[i], v) for i in ids]
    model.train(was)
    return {"pred": np.concatenate(preds), "target": np.concatenate(pts), "mask": np.concatenate(masks),
            "K": np.stack(Ks)}


def evaluate_scene(model, scene: SceneTensors, cfg: PointmapTrainConfig, device: torch.device, pose: bool = True,
                   train_frames: int = 16) -> dict:
    """Held-out metrics (mean L2, and PnP pose metrics when the scene has reference poses), plus the mean L2 on a
    few training frames (overfitting check)."""
    data = scene.data
    test = data.test_idx
    out: dict[str, Any] = {}
    if len(test):
        p = predict_frames(model, scene, test, device)
        ref, ref_kind = data.eval_poses
        use_pose = pose and cfg.eval_pose and ref is not None
        res = evaluate_predictions(p["pred"], p["target"], p["mask"], p["K"], ref[test] if use_pose else None,
                                   cfg.metres_per_unit, cfg.pnp_reproj_px, cfg.pnp_iterations,
                                   extent=data.extent())
        out.update(res)
        if use_pose:
            out["pose_reference"] = ref_kind
    tr = data.train_idx[np.linspace(0, len(data.train_idx) - 1, min(train_frames, len(data.train_idx))).astype(int)]
    p = predict_frames(model, scene, tr, device)
    out["train_mean_l2"] = float(np.nanmean(l2_errors(p["pred"], p["target"], p["mask"])))
    return out


def load_pointmap_student(checkpoint: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode, its PointmapTrainConfig, its spec: scene, image_hw (the training resolution), student,
    sampler) from a checkpoint written by `train_pointmap_student`."""
    path = Path(checkpoint)
    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint (expected <out_dir>/<scene>/{CKPT_NAME})")
    ck = load_checkpoint(path, "pointmap")
    cfg = PointmapTrainConfig.model_validate(ck["config"])
    student = cfg.student.model_copy(update={"pretrained": None})  # the weights come from the checkpoint
    model = build_pointmap_student(student, tuple(ck["spec"]["image_hw"]))
    model.load_state_dict(ck["model"])
    return model.to(device).eval(), cfg, ck["spec"]
