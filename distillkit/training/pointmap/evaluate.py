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


# ------------------------------------------------------------------------------------------ relocalisation
REFERENCES = ("auto", "dslam", "aligned")


def student_checkpoints(paths: list[str | Path]) -> list[Path]:
    """Checkpoint files from files or run folders (a folder with ``checkpoint-last.pt``, or the out_dir of
    `distillkit train --task pointmap`: every ``<scene>/checkpoint-last.pt``)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = [p / CKPT_NAME] if (p / CKPT_NAME).is_file() else sorted(p.glob(f"*/{CKPT_NAME}"))
            if not found:
                raise ValueError(f"{p}: no {CKPT_NAME} in it or in its sub-folders")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise ValueError(f"{p}: no such checkpoint or run folder")
    return out


def reloc_reference(data, used_known_poses: bool | None, choice: str = "auto"):
    """(poses [n, 4, 4], similarity (s, R, t) taking the student's frame to theirs or None, label, note).

    ``dslam``: the dataset's own ground truth (12-Scenes / 7-Scenes: their depth-SLAM poses; synthetic scenes: the
    exact render poses). The student predicts in the frame of its targets, the DUSt3R-aligned frame; with known
    poses that *is* the dataset's frame, otherwise it is registered to it by a similarity fitted on the training
    cameras only. ``aligned``: DUSt3R's aligned poses (store ``cam2world``), the student's own frame.
    ``auto``: dslam where the store has it, else aligned."""
    from distillkit.geometry.procrustes import weighted_umeyama

    if choice not in REFERENCES:
        raise ValueError(f"reference must be one of {REFERENCES}, got {choice!r}")
    if choice == "auto":
        choice = "dslam" if data.gt_cam2world is not None else "aligned"
    if choice == "aligned":
        if data.cam2world is None:
            raise ValueError(f"scene {data.name}: the store has no aligned poses (cam2world)")
        note = "DUSt3R-aligned poses" + (" (fixed to the dataset's poses during alignment)" if used_known_poses
                                         else "")
        return data.cam2world, None, "aligned", note
    if data.gt_cam2world is None:
        raise ValueError(f"scene {data.name}: the store has no ground-truth poses (gt_cam2world); use "
                         f"--reference aligned")
    if used_known_poses:
        return data.gt_cam2world, None, "dslam", "dataset ground-truth poses (the alignment's own frame)"
    tr = data.train_idx
    s, R, t = weighted_umeyama(data.cam2world[tr, :3, 3], data.gt_cam2world[tr, :3, 3])
    return data.gt_cam2world, (float(s), R, t), "dslam", ("dataset ground-truth poses; the aligned frame "
                                                         f"registered to them on {len(tr)} training cameras")


def reloc_predictions(data, used_known_poses: bool | None, pred: np.ndarray, K: np.ndarray, target: np.ndarray,
                      mask: np.ndarray, reference: str = "auto", protocol: str = "ace", stride: int | None = None,
                      ransac: str = "dsac", metres_per_unit: float = 1.0) -> dict:
    """One scene's row: predictions [n_test, H, W, 3] of its test frames (intrinsics K at that resolution, the
    targets and masks there) relocalised against the chosen ground truth, and the paper's mean L2 to the targets."""
    from distillkit.training.pointmap.reloc import PROTOCOLS, evaluate_reloc

    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {sorted(PROTOCOLS)}, got {protocol!r}")
    poses, sim, kind, note = reloc_reference(data, used_known_poses, reference)
    l2 = float(np.nanmean(l2_errors(pred, target, mask)))  # in the targets' (aligned) frame
    if sim is not None:  # the student's (aligned) frame -> the dataset's
        pred = (sim[0] * np.asarray(pred, np.float64) @ sim[1].T + sim[2]).astype(np.float32)
    mpu = 1.0 if kind == "dslam" else metres_per_unit
    res = evaluate_reloc(pred, K, poses[data.test_idx], protocol=PROTOCOLS[protocol], stride=stride, ransac=ransac,
                         metres_per_unit=mpu)
    res["mean_l2"] = l2
    return {"scene": data.name, "ground_truth": kind, "ground_truth_note": note, "metres_per_unit": mpu, **res}


def reloc_checkpoints(store: str, checkpoints: list[str | Path], reference: str = "auto", protocol: str = "ace",
                      stride: int | None = None, ransac: str = "dsac", storage_options: dict | None = None,
                      device: str = "cpu") -> dict:
    """`distillkit eval-reloc`: every checkpoint's scene relocalised by the protocol, per scene and the mean over
    scenes (ACE averages per-scene percentages and medians), with the paper's mean L2 beside it."""
    from distillkit.scenes.data import SceneData
    from distillkit.scenes.store import open_store
    from distillkit_schemas.scenes import read_alignment

    rows = []
    for ck in student_checkpoints(checkpoints):
        model, cfg, spec = load_pointmap_student(ck, device)
        data = SceneData.from_store(store, spec["scene"], storage_options)
        if not len(data.test_idx):
            raise ValueError(f"{store}: scene {data.name} has no test frames")
        rec = read_alignment(open_store(store, "r", storage_options), data.name)
        p = predict_frames(model, SceneTensors(data, tuple(spec["image_hw"])), data.test_idx, torch.device(device))
        row = reloc_predictions(data, rec.used_known_poses if rec else None, p["pred"], p["K"], p["target"],
                                p["mask"], reference, protocol, stride, ransac, cfg.metres_per_unit)
        rows.append({"student": cfg.student.kind, "checkpoint": str(ck), **row})
    keys = [k for k in rows[0] if k.startswith(("pct_", "median_")) or k in ("mean_l2", "ms_per_frame")]
    mean = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    mean["frames"] = int(sum(r["frames"] for r in rows))
    return {"store": store, "protocol": protocol, "ransac": ransac, "scenes": rows, "mean": mean}
