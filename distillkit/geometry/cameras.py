"""Pinhole helpers: pixel grids, depth <-> points, robust focal estimation, small SO(3) utilities.

Conventions (DUSt3R's): OpenCV cameras (x right, y down, z forward), poses are camera-to-world 4x4,
pixel ``(u, v) = (column, row)`` at integer coordinates, principal point ``(W/2, H/2)`` by default,
one focal per image (``fx = fy``).  Functions take/return float64 torch tensors unless noted.
"""

from __future__ import annotations

import math

import numpy as np
import torch

F64 = torch.float64


def pixel_offsets(H: int, W: int, pp=None, index=None) -> torch.Tensor:
    """``[N, 2]`` pixel offsets ``(u - cx, v - cy)`` of the row-major pixels (all, or ``index``)."""
    cx, cy = (W / 2.0, H / 2.0) if pp is None else (float(pp[0]), float(pp[1]))
    flat = torch.arange(H * W) if index is None else torch.as_tensor(index)
    u = (flat % W).to(F64) - cx
    v = torch.div(flat, W, rounding_mode="floor").to(F64) - cy
    return torch.stack((u, v), -1)


def camera_points(depth: torch.Tensor, offsets: torch.Tensor, focal) -> torch.Tensor:
    """Camera-frame points ``d * [(u-cx)/f, (v-cy)/f, 1]``; ``depth [..., N]``, ``offsets [N, 2]``, scalar focal."""
    return torch.cat((depth[..., None] * offsets / focal, depth[..., None]), -1)


def depth_to_world(depth, focal, cam2world, pp=None) -> np.ndarray:
    """World pointmap ``[H, W, 3]`` of one depth map ``[H, W]`` (numpy in/out)."""
    d = torch.as_tensor(np.asarray(depth, dtype=np.float64))
    H, W = d.shape
    x = camera_points(d.reshape(-1), pixel_offsets(H, W, pp), float(focal))
    T = torch.as_tensor(np.asarray(cam2world, dtype=np.float64))
    return (x @ T[:3, :3].T + T[:3, 3]).reshape(H, W, 3).numpy()


def estimate_focal(pts_cam: torch.Tensor, offsets: torch.Tensor, weights=None, iters: int = 10,
                   clip: tuple[float, float] | None = None, size: int | None = None) -> float:
    """Focal ``f`` minimising ``sum_k w_k || f * (x_k/z_k, y_k/z_k) - (u_k - cx, v_k - cy) ||`` (un-squared).

    Weiszfeld-style: least-squares start, then ``iters`` re-weighted least-squares steps with
    weights ``w / residual``.  ``pts_cam [N, 3]`` in the camera frame (any scale), ``offsets [N, 2]``.
    ``clip=(lo, hi)`` bounds the result to ``[lo, hi] * size / (2 tan 30deg)`` (60deg-FoV focal).
    """
    z = pts_cam[:, 2]
    ok = z > 0
    a = pts_cam[ok, :2] / z[ok, None]
    b = offsets[ok]
    w = torch.ones_like(z[ok]) if weights is None else torch.as_tensor(weights, dtype=F64)[ok]
    f = (w * (a * b).sum(-1)).sum() / (w * (a * a).sum(-1)).sum().clamp_min(1e-300)
    for _ in range(iters):
        res = (f * a - b).norm(dim=-1).clamp_min(1e-8)
        ww = w / res
        f = (ww * (a * b).sum(-1)).sum() / (ww * (a * a).sum(-1)).sum().clamp_min(1e-300)
    f = float(f)
    if clip is not None and size is not None:
        base = size / (2 * math.tan(math.radians(30)))
        f = min(max(f, clip[0] * base), clip[1] * base)
    return f


def skew(v: torch.Tensor) -> torch.Tensor:
    """``[..., 3] -> [..., 3, 3]`` cross-product matrices."""
    z = torch.zeros_like(v[..., 0])
    return torch.stack((torch.stack((z, -v[..., 2], v[..., 1]), -1),
                        torch.stack((v[..., 2], z, -v[..., 0]), -1),
                        torch.stack((-v[..., 1], v[..., 0], z), -1)), -2)


def so3_exp(w: torch.Tensor) -> torch.Tensor:
    """Rodrigues: rotation matrices ``[..., 3, 3]`` from axis-angle vectors ``[..., 3]``."""
    th = w.norm(dim=-1)[..., None, None]
    K = skew(w)
    small = th < 1e-8
    ths = torch.where(small, torch.ones_like(th), th)
    A = torch.where(small, 1 - th ** 2 / 6, torch.sin(ths) / ths)
    B = torch.where(small, 0.5 - th ** 2 / 24, (1 - torch.cos(ths)) / ths ** 2)
    eye = torch.eye(3, dtype=w.dtype).expand(K.shape)
    return eye + A * K + B * (K @ K)


def rotation_angle_deg(R) -> np.ndarray:
    """Rotation angle(s) in degrees of ``[..., 3, 3]`` matrices (numpy in/out, robust near 0)."""
    R = np.asarray(R, dtype=np.float64)
    skew_part = np.stack((R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]), -1)
    s = np.linalg.norm(skew_part, axis=-1) / 2
    c = (np.trace(R, axis1=-2, axis2=-1) - 1) / 2
    return np.degrees(np.arctan2(s, c))


def project_to_so3(M: torch.Tensor) -> torch.Tensor:
    """Nearest rotation (SVD) of ``[..., 3, 3]`` matrices."""
    U, _, Vh = torch.linalg.svd(M)
    d = torch.sign(torch.linalg.det(U @ Vh))
    D = torch.ones(U.shape[:-1], dtype=M.dtype)
    D[..., 2] = d
    return (U * D[..., None, :]) @ Vh
