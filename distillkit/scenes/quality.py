"""How good an aligned scene is: the aligner's residuals, and errors against the dataset's ground truth.

Against GT (notes/distill.md §3.3): per-pixel world-point error on valid GT depth (median / mean in cm, % under
5 and 10 cm), depth abs-rel, relative rotation / translation-direction errors, camera-centre and focal errors.
Without known poses the aligned scene lives in its own frame and scale, so it is first mapped onto the GT
points by the least-squares similarity (Umeyama); with known poses the errors are direct.
"""

from __future__ import annotations

import numpy as np

from distillkit.geometry.metrics import relative_rotation_errors, relative_translation_errors
from distillkit.geometry.procrustes import apply_similarity, weighted_umeyama

MAX_FIT_POINTS = 200_000


def _py(v):
    if isinstance(v, np.ndarray):
        return [_py(x) for x in v.tolist()] if v.ndim else _py(v.item())
    if isinstance(v, (list, tuple)):
        return [_py(x) for x in v]
    if isinstance(v, (np.floating, float)):
        return float(v)
    if isinstance(v, (np.integer, int)):
        return int(v)
    return v


def alignment_residuals(result) -> dict:
    """JSON-ready residual statistics of an ``AlignResult`` (per-frame and per-edge losses included)."""
    r = dict(result.residuals)
    out = {k: _py(v) for k, v in r.items() if k not in ("edge_loss", "image_loss")}
    out["frame_loss"] = _py(np.asarray(r.get("image_loss", []), np.float64))
    out["edge_loss"] = _py(np.asarray(r.get("edge_loss", []), np.float64))
    out["mask_fraction"] = float(np.mean(result.masks))
    return out


def gt_world_points(depth: np.ndarray, K: np.ndarray, cam2world: np.ndarray) -> np.ndarray:
    """[n, H, W, 3] world points of GT depth maps (0 depth gives the camera centre; mask it)."""
    n, H, W = depth.shape
    v, u = np.mgrid[:H, :W].astype(np.float64)
    out = np.empty((n, H, W, 3))
    for k in range(n):
        d = depth[k].astype(np.float64)
        cam = np.stack(((u - K[k, 0, 2]) / K[k, 0, 0] * d, (v - K[k, 1, 2]) / K[k, 1, 1] * d, d), -1)
        out[k] = cam @ cam2world[k, :3, :3].T + cam2world[k, :3, 3]
    return out


def gt_metrics(result, gt: dict, used_known_poses: bool) -> dict:
    c2w_gt, K_gt, depth_gt = gt.get("cam2world"), gt.get("intrinsics"), gt.get("depth")
    if c2w_gt is None:
        return {}
    out: dict = {"frame": "dataset (known poses)" if used_known_poses else "similarity-aligned to GT"}
    n = len(c2w_gt)
    if n > 1:
        rot = relative_rotation_errors(result.cam2world, c2w_gt)
        out.update(rel_rot_err_deg_mean=float(rot.mean()), rel_rot_err_deg_max=float(rot.max()))
        baseline = np.linalg.norm(c2w_gt[:, None, :3, 3] - c2w_gt[None, :, :3, 3], axis=-1)
        if (baseline[np.triu_indices(n, 1)] > 1e-9).all():
            tr = relative_translation_errors(result.cam2world, c2w_gt)
            out.update(rel_trans_dir_err_deg_mean=float(tr.mean()), rel_trans_dir_err_deg_max=float(tr.max()))
    if K_gt is not None:
        f_gt = (K_gt[:, 0, 0] + K_gt[:, 1, 1]) / 2
        out["focal_rel_err_mean"] = float(np.mean(np.abs(result.focals - f_gt) / f_gt))
    sim = None
    if depth_gt is not None and K_gt is not None:
        valid = depth_gt > 0
        X_gt = gt_world_points(depth_gt, K_gt, c2w_gt)[valid]
        X = result.pts3d[valid].astype(np.float64)
        if not used_known_poses and len(X) >= 3:
            step = max(1, len(X) // MAX_FIT_POINTS)
            sim = weighted_umeyama(X[::step], X_gt[::step])
            X = apply_similarity(*sim, X)
        err = np.linalg.norm(X - X_gt, axis=1)
        scale = 1.0 if sim is None else float(sim[0])
        rel = np.abs(result.depth[valid] * scale - depth_gt[valid]) / depth_gt[valid]
        out.update(point_err_cm_median=float(np.median(err) * 100), point_err_cm_mean=float(err.mean() * 100),
                   pct_points_lt_5cm=float((err < 0.05).mean() * 100),
                   pct_points_lt_10cm=float((err < 0.10).mean() * 100),
                   depth_abs_rel_median=float(np.median(rel)), gt_valid_fraction=float(valid.mean()))
    if sim is None and not used_known_poses:  # no GT depth: fit the camera centres instead
        if n >= 3:
            sim = weighted_umeyama(result.cam2world[:, :3, 3], c2w_gt[:, :3, 3])
    if sim is not None:
        centres = apply_similarity(*sim, result.cam2world[:, :3, 3])
        out["centre_err_m_median"] = float(np.median(np.linalg.norm(centres - c2w_gt[:, :3, 3], axis=1)))
        out["similarity_scale"] = float(sim[0])
    return out
