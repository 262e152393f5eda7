"""Relocalisation metrics of scene-coordinate students, by the ACE / DSAC* protocol (`distillkit eval-reloc`).

The protocol of nianticlabs/ace `test_ace.py` (DSAC* RANSAC at its defaults): images at 480 px height, the network's
output 8x subsampled (DSAC* puts output cell (x, y) at pixel (8x + 4, 8y + 4)); 64 hypotheses, each from 4 random
cells by P3P, kept only if all 4 reproject within the 10 px inlier threshold (else redrawn); every hypothesis scored
by its soft inlier count alpha / N * sum(1 - sigmoid(beta (e - tau))), beta = 5 / tau, errors clamped at 100 px; the
best score wins (at test time DSAC* takes the argmax of the softmax, so alpha = 100 and the clamp do not change the
pose); then re-fit (iterative PnP from the current pose) on the inliers e < tau while their number grows, at most
100 times. Metrics: % of frames with translation < 10 cm and rotation < 5 deg, < 5 cm/5 deg, < 2 cm/2 deg,
< 1 cm/1 deg (strict), and the median errors taken as sorted[n // 2] (as ACE does).

`dsac_pose` is that algorithm on OpenCV's P3P / iterative PnP (no DSAC* C++ extension needed); `ransac="opencv"`
runs `cv2.solvePnPRansac` with the same threshold and hypothesis count instead (`metrics.pnp_pose`) for comparison.

At the student's resolution: pixel thresholds scale with the image height (10 px and 100 px at 480 px are 2 px and
20 px at 96 px: the same angles). The students output a world point for every pixel of their input (the CNN /
MobileNet head at stride 8, bilinearly upsampled; the ViT by pixel shuffle), so no cell-to-pixel guess is needed:
the dense output is sampled every `stride` pixels, each sample at exactly its own pixel. ACE's spacing (8 px at
480 px) is 8 H / 480 px at height H (1.6 px at 96 px); the default stride is that, rounded (2 px: 48 x 64 points,
ACE has 60 x 80). A prediction that *is* subsampled (one value per stride x stride cell, e.g. an ACE output) goes
through `cell_pixels`: cell i covers pixels [i s, (i + 1) s), its centre is (i + 0.5) s - 0.5 with pixel centres at
integers (DSAC*'s i s + s / 2 is half a pixel off at s = 8).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from distillkit.training.pointmap.metrics import l2_errors, pnp_pose, pose_errors, pose_metrics

ACE_THRESHOLDS = ((0.10, 5.0), (0.05, 5.0), (0.02, 2.0), (0.01, 1.0))  # (metres, degrees), ACE's order
MAX_TRIES = 100  # draws per hypothesis before keeping the last one (DSAC*: 1e6, affordable in C++ only)


@dataclass(frozen=True)
class RelocProtocol:
    """DSAC*/ACE RANSAC settings, stated at the protocol's image height."""

    name: str = "ace"
    hypotheses: int = 64
    inlier_px: float = 10.0
    inlier_alpha: float = 100.0
    max_reproj_px: float = 100.0
    image_height: int = 480
    subsample: int = 8

    def at_height(self, H: int) -> dict:
        """The pixel settings for images H px high (same angles as at `image_height`)."""
        k = H / self.image_height
        return {"inlier_px": self.inlier_px * k, "max_reproj_px": self.max_reproj_px * k,
                "ace_spacing_px": self.subsample * k, "stride": max(1, round(self.subsample * k))}


PROTOCOLS = {"ace": RelocProtocol()}


def cell_pixels(h: int, w: int, stride: float) -> np.ndarray:
    """[h, w, 2] pixel coordinates (u, v) of the centres of a stride-subsampled prediction's cells."""
    v, u = np.mgrid[:h, :w].astype(np.float64)
    return np.stack(((u + 0.5) * stride - 0.5, (v + 0.5) * stride - 0.5), -1)


def dense_samples(pred: np.ndarray, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """(points [h, w, 3], their pixels [h, w, 2]): every `stride`-th pixel of a full-resolution prediction, each
    point at exactly its own pixel (offset (stride - 1) // 2 keeps the samples centred in the image)."""
    o = (stride - 1) // 2
    H, W = pred.shape[:2]
    v, u = np.mgrid[o:H:stride, o:W:stride].astype(np.float64)
    return pred[o::stride, o::stride], np.stack((u, v), -1)


def _project_errors(X: np.ndarray, uv: np.ndarray, K: np.ndarray, rvec: np.ndarray, tvec: np.ndarray,
                    clamp: float) -> np.ndarray:
    """Reprojection errors [N] of world points under a world-to-camera pose, clamped; points behind the camera get
    the clamp value (projectPoints would mirror them through the centre)."""
    import cv2

    R, _ = cv2.Rodrigues(rvec)
    Xc = X @ R.T + tvec.reshape(1, 3)
    z = Xc[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        p = Xc[:, :2] / z[:, None]
        pu = K[0, 0] * p[:, 0] + K[0, 1] * p[:, 1] + K[0, 2]
        pv = K[1, 1] * p[:, 1] + K[1, 2]
        e = np.hypot(pu - uv[:, 0], pv - uv[:, 1])
    return np.where((z > 0) & np.isfinite(e), np.minimum(e, clamp), clamp)


def dsac_pose(pts: np.ndarray, uv: np.ndarray, K: np.ndarray, hypotheses: int = 64, inlier_px: float = 10.0,
              max_reproj_px: float = 100.0, inlier_alpha: float = 100.0, seed: int = 0,
              max_refine: int = 100) -> tuple[np.ndarray | None, int]:
    """DSAC*'s RANSAC (see the module docstring) on points [..., 3] at pixels [..., 2] with intrinsics K:
    (camera-to-world [4, 4], final inlier count), or (None, 0) when no hypothesis could be formed."""
    import cv2

    X = np.asarray(pts, np.float64).reshape(-1, 3)
    px = np.asarray(uv, np.float64).reshape(-1, 2)
    keep = np.isfinite(X).all(1)
    X, px = X[keep], px[keep]
    K = np.asarray(K, np.float64)
    if len(X) < 4:
        return None, 0
    rng = np.random.default_rng(seed)
    hyps = []
    for _ in range(hypotheses):
        hyp = None
        for _ in range(MAX_TRIES):
            idx = rng.integers(0, len(X), 4)  # with replacement, as DSAC*'s irand
            try:
                ok, r, t = cv2.solvePnP(X[idx], px[idx], K, None, flags=cv2.SOLVEPNP_P3P)
            except cv2.error:
                continue
            if not ok:
                continue
            hyp = (r, t)
            if (_project_errors(X[idx], px[idx], K, r, t, math.inf) < inlier_px).all():
                break
        if hyp is not None:
            hyps.append(hyp)
    if not hyps:
        return None, 0
    errs = [_project_errors(X, px, K, r, t, max_reproj_px) for r, t in hyps]
    beta = 5.0 / inlier_px
    # soft inlier count; alpha / N scales every score alike: the argmax (DSAC* at test time) does not depend on it
    scores = [inlier_alpha / len(X) * float(np.sum(1.0 - 1.0 / (1.0 + np.exp(-beta * (e - inlier_px)))))
              for e in errs]
    best = int(np.argmax(scores))
    rvec, tvec = hyps[best]
    err, best_count, inliers = errs[best], 4, 0
    for _ in range(max_refine):  # re-fit on the inliers while their number grows
        inl = np.flatnonzero(err < inlier_px)
        if len(inl) <= best_count:
            break
        best_count = len(inl)
        flag = cv2.SOLVEPNP_ITERATIVE if len(inl) > 4 else cv2.SOLVEPNP_P3P
        try:
            ok, r2, t2 = cv2.solvePnP(X[inl], px[inl], K, None, rvec.copy(), tvec.copy(), useExtrinsicGuess=True,
                                      flags=flag)
        except cv2.error:
            break
        if not ok:
            break
        rvec, tvec, inliers = r2, t2, len(inl)
        err = _project_errors(X, px, K, rvec, tvec, max_reproj_px)
    R, _ = cv2.Rodrigues(rvec)
    w2c = np.eye(4)
    w2c[:3, :3], w2c[:3, 3] = R, tvec.reshape(3)
    return np.linalg.inv(w2c), int(inliers)


def reloc_metrics(t_err: np.ndarray, r_err: np.ndarray, metres_per_unit: float = 1.0) -> dict:
    """ACE's numbers from per-frame errors (world units, degrees): % within each bucket (strict), medians as
    sorted[n // 2]."""
    return pose_metrics(t_err, r_err, metres_per_unit, thresholds=ACE_THRESHOLDS, strict=True, median="upper")


def evaluate_reloc(pred: np.ndarray, K: np.ndarray, c2w_ref: np.ndarray, target: np.ndarray | None = None,
                   mask: np.ndarray | None = None, protocol: RelocProtocol = PROTOCOLS["ace"],
                   stride: int | None = None, ransac: str = "dsac", metres_per_unit: float = 1.0,
                   seed: int = 0) -> dict:
    """Relocalise every frame of full-resolution predictions [n, H, W, 3] (intrinsics [n, 3, 3]) against reference
    camera-to-world poses [n, 4, 4]: ACE's metrics, per-frame errors and inlier counts, and with targets the mean
    L2 (the paper's metric)."""
    pred = np.asarray(pred, np.float32)
    n, H = pred.shape[0], pred.shape[1]
    if len(K) != n or len(c2w_ref) != n:
        raise ValueError(f"{n} predictions but {len(K)} intrinsics and {len(c2w_ref)} reference poses")
    px = protocol.at_height(H)
    stride = int(stride or px["stride"])
    if ransac not in ("dsac", "opencv"):
        raise ValueError(f"ransac must be 'dsac' or 'opencv', got {ransac!r}")
    t_err, r_err, inliers = [], [], []
    t0 = time.perf_counter()
    for k in range(n):
        pts, uv = dense_samples(pred[k], stride)
        if ransac == "dsac":
            est, inl = dsac_pose(pts, uv, K[k], protocol.hypotheses, px["inlier_px"], px["max_reproj_px"],
                                 protocol.inlier_alpha, seed=seed + k)
        else:  # OpenCV's RANSAC on the same samples: a grid whose pixel (i, j) is uv[i, j]
            est, inl = _opencv_pose(pts, uv, K[k], protocol.hypotheses, px["inlier_px"], seed + k)
        t, r = pose_errors(est, c2w_ref[k])
        t_err.append(t)
        r_err.append(r)
        inliers.append(inl)
    out = {"protocol": protocol.name, "ransac": ransac, "image_hw": [H, int(pred.shape[2])], "stride_px": stride,
           "points_per_frame": int(np.prod(dense_samples(pred[0], stride)[0].shape[:2])) if n else 0,
           **{k: round(v, 4) for k, v in px.items() if k != "stride"},
           "ms_per_frame": round(1000 * (time.perf_counter() - t0) / max(n, 1), 1)}
    out.update(reloc_metrics(np.array(t_err), np.array(r_err), metres_per_unit))
    if target is not None:
        out["mean_l2"] = float(np.nanmean(l2_errors(pred, target, mask)))
    out["per_frame_t_err"] = [float(x) for x in t_err]
    out["per_frame_r_err"] = [float(x) for x in r_err]
    out["per_frame_inliers"] = inliers
    return out


def _opencv_pose(pts: np.ndarray, uv: np.ndarray, K: np.ndarray, iterations: int, reproj_px: float,
                 seed: int) -> tuple[np.ndarray | None, int]:
    """`metrics.pnp_pose` (cv2.solvePnPRansac + LM refinement) on arbitrary sample pixels: it reads pixel (u, v)
    from a grid, so the grid is rescaled to the samples' spacing (an exact affine map of the intrinsics)."""
    h, w = pts.shape[:2]
    u0, v0 = uv[0, 0]
    su = (uv[0, 1, 0] - u0) if w > 1 else 1.0
    sv = (uv[1, 0, 1] - v0) if h > 1 else 1.0
    Kg = np.array(K, np.float64)  # grid index (j, i) -> pixel (u0 + su j, v0 + sv i)
    Kg[0] = [K[0, 0] / su, K[0, 1] / su, (K[0, 2] - u0) / su]
    Kg[1] = [0.0, K[1, 1] / sv, (K[1, 2] - v0) / sv]
    return pnp_pose(pts, Kg, None, reproj_px / su, iterations, max_points=10 ** 9, seed=seed)
