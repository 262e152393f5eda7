"""Pinhole helpers: pixel offsets, depth <-> points, robust focal estimation, small SO(3) utilities.

Conventions (DUSt3R's): OpenCV cameras (x right, y down, z forward), poses are camera-to-world 4x4,
pixel ``(u, v) = (column, row)`` at integer coordinates, principal point ``(W/2, H/2)`` by default,
one focal per image (``fx = fy``).  numpy float64 throughout.
"""

from __future__ import annotations

import math

import numpy as np


def pixel_offsets(H: int, W: int, pp=None, index=None) -> np.ndarray:
    """``[2, N]`` pixel offsets ``(u - cx, v - cy)`` of the row-major pixels (all, or ``index``)."""
    cx, cy = (W / 2.0, H / 2.0) if pp is None else (float(pp[0]), float(pp[1]))
    flat = np.arange(H * W) if index is None else np.asarray(index)
    return np.stack(((flat % W) - cx, (flat // W) - cy)).astype(np.float64)


def camera_points(depth: np.ndarray, offsets: np.ndarray, focal: float) -> np.ndarray:
    """Camera-frame points ``[3, N]`` = ``d * [(u-cx)/f, (v-cy)/f, 1]``; ``depth [N]``, ``offsets [2, N]``."""
    return np.concatenate((depth * offsets / focal, depth[None]), 0)


def depth_to_world(depth, focal, cam2world, pp=None) -> np.ndarray:
    """World pointmap ``[H, W, 3]`` of one depth map ``[H, W]``."""
    d = np.asarray(depth, dtype=np.float64)
    H, W = d.shape
    x = camera_points(d.reshape(-1), pixel_offsets(H, W, pp), float(focal))
    T = np.asarray(cam2world, dtype=np.float64)
    return (T[:3, :3] @ x + T[:3, 3:]).T.reshape(H, W, 3)


def focal_base(size: int) -> float:
    """Focal of a 60-degree field of view over ``size`` pixels (DUSt3R's reference focal)."""
    return size / (2 * math.tan(math.radians(30)))


def estimate_focal(pts_cam: np.ndarray, offsets: np.ndarray, weights=None, iters: int = 10,
                   clip: tuple[float, float] | None = (0.5, 3.5), size: int | None = None) -> float:
    """Focal ``f`` minimising ``sum_k w_k || f * (x_k/z_k, y_k/z_k) - (u_k - cx, v_k - cy) ||`` (un-squared).

    Weiszfeld-style: least-squares start, then ``iters`` re-weighted least-squares steps with
    weights ``w / residual``.  ``pts_cam [N, 3]`` in the camera frame (any scale), ``offsets [2, N]``.
    ``clip=(lo, hi)`` bounds the result to ``[lo, hi] * focal_base(size)`` when ``size`` is given.
    """
    z = pts_cam[:, 2]
    ok = z > 0
    a = pts_cam[ok, :2] / z[ok, None]
    b = offsets.T[ok]
    w = np.ones(int(ok.sum())) if weights is None else np.asarray(weights, np.float64)[ok]
    ab, aa = (a * b).sum(-1), (a * a).sum(-1)
    f = (w * ab).sum() / max((w * aa).sum(), 1e-300)
    for _ in range(iters):
        ww = w / np.maximum(np.linalg.norm(f * a - b, axis=-1), 1e-8)
        f = (ww * ab).sum() / max((ww * aa).sum(), 1e-300)
    f = float(f)
    if clip is not None and size is not None:
        f = min(max(f, clip[0] * focal_base(size)), clip[1] * focal_base(size))
    return f


def skew(v: np.ndarray) -> np.ndarray:
    """``[..., 3] -> [..., 3, 3]`` cross-product matrices."""
    z = np.zeros_like(v[..., 0])
    return np.stack((np.stack((z, -v[..., 2], v[..., 1]), -1),
                     np.stack((v[..., 2], z, -v[..., 0]), -1),
                     np.stack((-v[..., 1], v[..., 0], z), -1)), -2)


def so3_exp(w: np.ndarray) -> np.ndarray:
    """Rodrigues: rotation matrices ``[..., 3, 3]`` from axis-angle vectors ``[..., 3]``."""
    th = np.linalg.norm(w, axis=-1)[..., None, None]
    K = skew(w)
    small = th < 1e-8
    ths = np.where(small, 1.0, th)
    A = np.where(small, 1 - th ** 2 / 6, np.sin(ths) / ths)
    B = np.where(small, 0.5 - th ** 2 / 24, (1 - np.cos(ths)) / ths ** 2)
    return np.eye(3) + A * K + B * (K @ K)


def rotation_angle_deg(R) -> np.ndarray:
    """Rotation angle(s) in degrees of ``[..., 3, 3]`` matrices (robust near 0 and 180)."""
    R = np.asarray(R, dtype=np.float64)
    v = np.stack((R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]), -1)
    s = np.linalg.norm(v, axis=-1) / 2
    c = (np.trace(R, axis1=-2, axis2=-1) - 1) / 2
    return np.degrees(np.arctan2(s, c))


def project_to_so3(M: np.ndarray) -> np.ndarray:
    """Nearest rotation (SVD) of ``[..., 3, 3]`` matrices."""
    U, _, Vh = np.linalg.svd(M)
    D = np.ones(U.shape[:-1])
    D[..., 2] = np.sign(np.linalg.det(U @ Vh))
    return (U * D[..., None, :]) @ Vh
