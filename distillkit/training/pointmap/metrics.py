"""Held-out metrics for scene-coordinate (world pointmap) predictions: mean L2 error and PnP-RANSAC camera pose.

* `l2_errors`: per-frame mean Euclidean distance between predicted and target world points over valid pixels (the
  paper's "mean L2 error on the held-out set").
* `pnp_pose`: camera-to-world pose from one predicted pointmap with known intrinsics, OpenCV `solvePnPRansac`
  (SQPnP inside RANSAC, then Levenberg-Marquardt refinement on the inliers, re-selected while they grow).
* `pose_errors` / `pose_metrics`: translation (camera centre distance) and rotation (angle of R_est R_ref^T) errors,
  % of frames within 5 cm/5 deg and 10 cm/10 deg (plus ACE's 2 cm/2 deg and 10 cm/5 deg), medians. A frame where
  PnP fails counts as an infinite error (it is a miss, never silently dropped).

Intrinsics with a negative focal length (a horizontally flipped view, see `training.pointmap.view_K`) are handled:
the image is mirrored back (u -> -u, cx -> -cx), which is an exact proper pinhole camera.
"""

from __future__ import annotations

import math

import numpy as np

THRESHOLDS = ((0.02, 2.0), (0.05, 5.0), (0.10, 5.0), (0.10, 10.0))  # (metres, degrees)


def l2_errors(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """[n, H, W, 3] x [n, H, W, 3] (x [n, H, W] valid) -> [n] mean L2 distance per frame (NaN if no valid pixel)."""
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if pred.shape != target.shape:
        raise ValueError(f"pred {pred.shape} and target {target.shape} differ")
    d = np.linalg.norm(pred - np.nan_to_num(target), axis=-1)
    m = np.ones(d.shape, bool) if mask is None else np.asarray(mask, bool)
    cnt = m.reshape(len(d), -1).sum(1)
    tot = np.where(m, d, 0).reshape(len(d), -1).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan)


def _proper(K: np.ndarray, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror a negative-focal camera (flipped view) back to a proper one: u' = -u, fx' = -fx, cx' = -cx."""
    K = np.array(K, dtype=np.float64)
    uv = np.array(uv, dtype=np.float64)
    if K[0, 0] < 0:
        K[0, 0], K[0, 2] = -K[0, 0], -K[0, 2]
        uv[:, 0] = -uv[:, 0]
    if K[1, 1] < 0:
        K[1, 1], K[1, 2] = -K[1, 1], -K[1, 2]
        uv[:, 1] = -uv[:, 1]
    return K, uv


def pnp_pose(pts: np.ndarray, K: np.ndarray, mask: np.ndarray | None = None, reproj_px: float = 2.0,
             iterations: int = 1000, max_points: int = 4000, seed: int = 0,
             refine_rounds: int = 4) -> tuple[np.ndarray | None, int]:
    """Camera-to-world [4, 4] from a predicted world pointmap [H, W, 3] (pixel (u, v) <-> pts[v, u]) and its
    intrinsics, by PnP-RANSAC then Levenberg-Marquardt on the inliers (re-selected with the refined pose while the
    consensus grows); also the inlier count. None when PnP fails (fewer than 4 points / no solution)."""
    import cv2

    H, W = pts.shape[:2]
    v, u = np.mgrid[:H, :W]
    uv = np.stack((u, v), -1).reshape(-1, 2).astype(np.float64)
    X = np.asarray(pts, dtype=np.float64).reshape(-1, 3)
    keep = np.isfinite(X).all(1)
    if mask is not None:
        keep &= np.asarray(mask, bool).reshape(-1)
    uv, X = uv[keep], X[keep]
    if len(X) > max_points:
        sel = np.random.default_rng(seed).choice(len(X), max_points, replace=False)
        uv, X = uv[sel], X[sel]
    if len(X) < 4:
        return None, 0
    Kp, uv = _proper(K, uv)
    cv2.setRNGSeed(seed)
    try:
        ok, rvec, tvec, inl = cv2.solvePnPRansac(X, uv, Kp, None, iterationsCount=iterations,
                                                 reprojectionError=float(reproj_px), confidence=0.999,
                                                 flags=cv2.SOLVEPNP_SQPNP)
    except cv2.error:
        return None, 0
    if not ok or inl is None or len(inl) < 4:
        return None, 0
    inl = inl.reshape(-1)
    # refine on the inliers, re-select the inliers with the refined pose, repeat while the consensus grows
    crit = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_COUNT, 100, 1e-10)
    for _ in range(refine_rounds):
        try:
            r2, t2 = cv2.solvePnPRefineLM(X[inl], uv[inl], Kp, None, rvec.copy(), tvec.copy(), crit)
        except cv2.error:
            break
        proj, _ = cv2.projectPoints(X, r2, t2, Kp, None)
        new = np.flatnonzero(np.linalg.norm(proj.reshape(-1, 2) - uv, axis=1) < reproj_px)
        if len(new) < len(inl):
            break
        rvec, tvec, grew, inl = r2, t2, len(new) > len(inl), new
        if not grew:
            break
    R, _ = cv2.Rodrigues(rvec)
    w2c = np.eye(4)
    w2c[:3, :3], w2c[:3, 3] = R, tvec.reshape(3)
    return np.linalg.inv(w2c), int(len(inl))


def pose_errors(c2w_est: np.ndarray | None, c2w_ref: np.ndarray) -> tuple[float, float]:
    """(translation error = distance of camera centres, rotation error in degrees); (inf, inf) if no estimate."""
    if c2w_est is None:
        return math.inf, math.inf
    t = float(np.linalg.norm(c2w_est[:3, 3] - c2w_ref[:3, 3]))
    Rd = c2w_est[:3, :3] @ c2w_ref[:3, :3].T
    r = math.degrees(math.acos(float(np.clip((np.trace(Rd) - 1) / 2, -1.0, 1.0))))
    return t, r


def pose_metrics(t_err: np.ndarray, r_err: np.ndarray, metres_per_unit: float = 1.0,
                 thresholds: tuple = THRESHOLDS, strict: bool = False, median: str = "mean") -> dict:
    """% of frames within each (metres, deg) threshold and the median errors, from per-frame errors in world units.

    `strict`: within means < (ACE) rather than <=. `median`: "mean" of the two middle values (numpy) or "upper",
    sorted[n // 2] (ACE's `test_ace.py`)."""
    t_m = np.asarray(t_err, dtype=np.float64) * metres_per_unit
    r = np.asarray(r_err, dtype=np.float64)
    out: dict = {"frames": int(len(t_m)), "pnp_failed": int(np.isinf(t_m).sum())}
    for tm, rd in thresholds:
        ok = (t_m < tm) & (r < rd) if strict else (t_m <= tm) & (r <= rd)
        out[f"pct_{round(tm * 100)}cm_{round(rd)}deg"] = float(100.0 * np.mean(ok)) if len(t_m) else float("nan")

    def med(x):
        if not len(x):
            return float("nan")
        return float(np.sort(x)[len(x) // 2]) if median == "upper" else float(np.median(x))

    out["median_t_cm"] = med(t_m) * 100
    out["median_r_deg"] = med(r)
    return out


def evaluate_predictions(pred: np.ndarray, target: np.ndarray, mask: np.ndarray, K: np.ndarray,
                         c2w_ref: np.ndarray | None = None, metres_per_unit: float = 1.0,
                         reproj_px: float | None = None, iterations: int = 1000, max_points: int = 4000,
                         pnp_mask: bool = False, extent: float | None = None) -> dict:
    """All held-out metrics for predicted pointmaps [n, H, W, 3] against targets (and reference poses, if given).

    PnP uses every pixel's prediction (a deployed student has no target mask) unless `pnp_mask`; `reproj_px`
    defaults to ACE's 10 px at 480 px image height, scaled to this height (at least 1 px)."""
    per_frame = l2_errors(pred, target, mask)
    out: dict = {"mean_l2": float(np.nanmean(per_frame)), "median_frame_l2": float(np.nanmedian(per_frame)),
                 "per_frame_l2": [float(x) for x in per_frame]}
    if extent:
        out["mean_l2_over_extent"] = out["mean_l2"] / extent
    if c2w_ref is not None:
        H = pred.shape[1]
        px = reproj_px if reproj_px is not None else max(1.0, 10.0 * H / 480)
        t_err, r_err = [], []
        for k in range(len(pred)):
            est, _ = pnp_pose(pred[k], K[k], mask[k] if pnp_mask else None, px, iterations, max_points, seed=k)
            t, r = pose_errors(est, c2w_ref[k])
            t_err.append(t)
            r_err.append(r)
        out.update(pose_metrics(np.array(t_err), np.array(r_err), metres_per_unit))
        out["pnp_reproj_px"] = px
        out["per_frame_t_err"] = [float(x) for x in t_err]
        out["per_frame_r_err"] = [float(x) for x in r_err]
    return out
