"""Synthetic multi-view scenes with DUSt3R-style pairwise predictions, in the layout of ``ga_scene6.npz``.

A random box-shaped room (inside walls, floor, ceiling) with a few yawed boxes standing on the floor,
``n`` pinhole cameras on an arc looking roughly at the room centre (OpenCV axes, +y down, camera-to-world
poses, ``fx = fy``, principal point ``(W/2, H/2)``, integer pixel centres), depth by exact ray casting.
For every directed edge ``e = (i, j)`` of the pair graph: ``pred1_pts3d[e]`` = view ``i``'s points and
``pred2_pts3d_in_other_view[e]`` = view ``j``'s points, both in camera ``i``'s frame, multiplied by one
random scale per edge (log-uniform in ``scale_range``) and perturbed by Gaussian noise of std
``noise x`` the point's distance to camera ``i`` (per coordinate).  Confidences are ``1 + c`` with
``c`` decreasing with the angle between the two optical axes, log-normal per-pixel jitter, ``x 0.7``
on the view-2 side and ``/ 5`` at depth discontinuities.  ``noise = 0`` gives exact (scale-only)
predictions.
"""

from __future__ import annotations

import math

import numpy as np

from distillkit.geometry.pairs import make_pairs


def _look_at(centre, target):
    z = target - centre
    z /= np.linalg.norm(z)
    x = np.cross(np.array([0.0, 1.0, 0.0]), z)  # world "down" x forward = right
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack((x, y, z), 1)


def random_layout(rng, n_boxes):
    room_lo = np.array([-3.0, -2.0, -3.0]) * (1 + rng.uniform(-0.1, 0.1, 3))
    room_hi = np.array([3.0, 1.2, 3.0]) * (1 + rng.uniform(-0.1, 0.1, 3))
    room_hi[1] = 1.2  # floor (+y is down)
    boxes = []
    for _ in range(n_boxes):
        half = np.array([rng.uniform(0.2, 0.5), rng.uniform(0.15, 0.5), rng.uniform(0.2, 0.5)])
        rad, ang = 1.3 * math.sqrt(rng.uniform()), rng.uniform(0, 2 * math.pi)
        centre = np.array([rad * math.cos(ang), 1.2 - half[1], rad * math.sin(ang)])
        yaw = rng.uniform(0, math.pi / 2)
        c, s = math.cos(yaw), math.sin(yaw)
        boxes.append((centre, half, np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])))
    return room_lo, room_hi, boxes


def _cameras(rng, n, arc_deg, radius):
    mid = rng.uniform(0, 2 * math.pi)
    angles = [mid] if n == 1 else mid + np.radians(arc_deg) * (np.arange(n) / (n - 1) - 0.5)
    c2w = np.tile(np.eye(4), (n, 1, 1))
    for k, th in enumerate(angles):
        r = radius * (1 + rng.uniform(-0.05, 0.05))
        centre = np.array([r * math.sin(th), -0.3 + rng.uniform(-0.1, 0.1), r * math.cos(th)])
        target = np.array([rng.uniform(-0.3, 0.3), 0.4 + rng.uniform(-0.1, 0.1), rng.uniform(-0.3, 0.3)])
        c2w[k, :3, :3] = _look_at(centre, target)
        c2w[k, :3, 3] = centre
    return c2w


def cast_rays(o, dirs, room_lo, room_hi, boxes):
    """Ray parameter (= depth, as rays have unit z in the camera) and surface id of the first hit."""
    with np.errstate(divide="ignore", invalid="ignore"):
        dsafe = np.where(np.abs(dirs) < 1e-12, 1e-12, dirs)
        t_wall = np.where(dsafe > 0, (room_hi - o) / dsafe, (room_lo - o) / dsafe)
        depth = t_wall.min(1)
        sid = t_wall.argmin(1)
        for b, (centre, half, Ry) in enumerate(boxes):
            ol = (o - centre) @ Ry
            dl = dirs @ Ry
            dl = np.where(np.abs(dl) < 1e-12, 1e-12, dl)
            t1, t2 = (-half - ol) / dl, (half - ol) / dl
            tmin = np.minimum(t1, t2).max(1)
            tmax = np.maximum(t1, t2).min(1)
            hit = (tmax >= tmin) & (tmin > 1e-6) & (tmin < depth)
            depth = np.where(hit, tmin, depth)
            sid = np.where(hit, 3 + b, sid)
    return depth, sid


def depth_discontinuities(depth, sid, rel: float = 0.02):
    disc = np.zeros(depth.shape, bool)
    for axis in (0, 1):
        a = [slice(None)] * 2
        b = [slice(None)] * 2
        a[axis], b[axis] = slice(1, None), slice(None, -1)
        jump = (sid[tuple(a)] != sid[tuple(b)]) & (np.abs(depth[tuple(a)] - depth[tuple(b)]) >
                                                   rel * np.minimum(depth[tuple(a)], depth[tuple(b)]))
        disc[tuple(a)] |= jump
        disc[tuple(b)] |= jump
    return disc


def make_scene(n: int = 6, H: int = 48, W: int = 64, graph: str = "complete", noise: float = 0.01, seed: int = 0,
               focal: float | None = None, arc_deg: float = 200.0, radius: float = 2.1, n_boxes: int = 3,
               scale_range: tuple[float, float] = (0.3, 3.0), symmetrize: bool = True, conf_max: float = 18.0,
               conf_angle_deg: float = 55.0, conf_jitter: float = 0.25) -> dict:
    """A synthetic scene as a dict with the keys of ``ga_scene6.npz`` (``edges``, ``pred1_pts3d``,
    ``pred2_pts3d_in_other_view``, ``pred1_conf``, ``pred2_conf``, ``images_uint8``, ``gt_K``,
    ``gt_cam2world``, ``gt_depth``, ``gt_pts3d_world``, ``gt_pair_scales``, ``gt_depth_discontinuity``)."""
    rng = np.random.default_rng(seed)
    room_lo, room_hi, boxes = random_layout(rng, n_boxes)
    c2w = _cameras(rng, n, arc_deg, radius)
    f = 0.9 * W if focal is None else float(focal)
    K = np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1.0]])
    v, u = np.mgrid[:H, :W]
    rays = np.stack(((u - W / 2) / f, (v - H / 2) / f, np.ones((H, W))), -1).reshape(-1, 3)
    depth = np.empty((n, H, W), np.float32)
    world = np.empty((n, H, W, 3), np.float32)
    disc = np.empty((n, H, W), bool)
    images = np.empty((n, H, W, 3), np.uint8)
    for k in range(n):
        dirs = rays @ c2w[k, :3, :3].T
        d, sid = cast_rays(c2w[k, :3, 3], dirs, room_lo, room_hi, boxes)
        P = c2w[k, :3, 3] + d[:, None] * dirs
        depth[k] = d.reshape(H, W)
        world[k] = P.reshape(H, W, 3)
        disc[k] = depth_discontinuities(d.reshape(H, W), sid.reshape(H, W))
        tint = np.stack((np.sin(sid * 1.7), np.sin(sid * 2.3 + 1), np.sin(sid * 3.1 + 2)), -1)
        pattern = np.sin(4 * P[:, :1]) * np.cos(4 * P[:, 2:3]) + np.sin(4 * P[:, 1:2])
        images[k] = np.clip(128 + 60 * tint + 50 * pattern, 0, 255).astype(np.uint8).reshape(H, W, 3)

    edges = make_pairs(n, graph, symmetrize=symmetrize)
    E = len(edges)
    lo, hi = np.log(scale_range[0]), np.log(scale_range[1])
    scales = np.exp(rng.uniform(lo, hi, E))
    pred1 = np.empty((E, H, W, 3), np.float32)
    pred2 = np.empty((E, H, W, 3), np.float32)
    conf1 = np.empty((E, H, W), np.float32)
    conf2 = np.empty((E, H, W), np.float32)
    for e, (i, j) in enumerate(edges.tolist()):
        Ri, ci = c2w[i, :3, :3].astype(np.float32), c2w[i, :3, 3].astype(np.float32)
        cos_a = float(np.clip(c2w[i, :3, 2] @ c2w[j, :3, 2], -1, 1))
        c = conf_max * math.exp(-math.degrees(math.acos(cos_a)) / conf_angle_deg)
        for out, cout, src, side in ((pred1, conf1, i, 1.0), (pred2, conf2, j, 0.7)):
            X = (world[src] - ci) @ Ri
            if noise:
                dist = np.linalg.norm(X, axis=-1, keepdims=True)
                X += rng.standard_normal(X.shape, dtype=np.float32) * (noise * dist)
            out[e] = X * np.float32(scales[e])
            jitter = np.exp(conf_jitter * rng.standard_normal((H, W))).astype(np.float32)
            cout[e] = 1 + c * side * jitter / np.where(disc[src], 5.0, 1.0).astype(np.float32)
    return {"edges": edges.astype(np.int32), "pred1_pts3d": pred1, "pred2_pts3d_in_other_view": pred2,
            "pred1_conf": conf1, "pred2_conf": conf2, "images_uint8": images, "gt_K": K, "gt_cam2world": c2w,
            "gt_depth": depth, "gt_pts3d_world": world, "gt_pair_scales": scales,
            "gt_depth_discontinuity": disc}
