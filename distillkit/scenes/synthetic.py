"""Synthetic box rooms rendered by exact ray casting (tests, benchmarks): one room model, one pinhole renderer.

Room: a random box (walls, floor, ceiling; about 6 x 3.2 x 6 m, world +y down, floor at y = 1.2) with a few yawed
boxes on the floor (`random_layout`) and a solid (3-D) texture evaluated at the world point, so every view sees the
same surface pattern (`make_room`, `Room.colour`). Cameras: pinhole, OpenCV axes, camera-to-world poses (`pose`,
`look_at`, with roll), depth = ray parameter of rays with unit camera z (`cast_rays`, `render`); named camera paths
(`arc_path`, `camera_path`, `two_pass_path`, `lap_path`, `laps_path`). Three entry points over these parts:

* `make_scene(...)` -> dict of DUSt3R-style pair predictions laid out like ``ga_scene6.npz`` (global alignment tests,
  `distillkit.bench.align`), texture ``"smooth"``, cameras on an arc looking near the room centre, principal point
  ``(W/2, H/2)``. Edge ``e = (i, j)``: ``pred1_pts3d[e]`` / ``pred2_pts3d_in_other_view[e]`` = view ``i``'s / ``j``'s
  points in camera ``i``'s frame, times one log-uniform scale per edge (``scale_range``), plus Gaussian noise of std
  ``noise x`` the distance to camera ``i``. Confidences ``1 + c``, ``c`` decreasing with the angle between the
  optical axes, log-normal jitter, ``x 0.7`` on the view-2 side, ``/ 5`` at depth discontinuities.
* `synthetic_scene(...)` -> `SceneData` with *exact* world pointmaps, K and poses (pointmap students), texture
  ``"sinusoid"`` (aperiodic at scene scale: a location is recognisable from its appearance, for relocalisation).
* `write_12scenes` / `write_7scenes` / `write_dataset` -> the raw 12-Scenes / 7-Scenes layout on disk
  (``shared/notes/distill.md`` §3.5-3.8; colour JPEG / PNG, lower-resolution uint16 depth in mm, 4x4 pose text
  files, split files), with a few ``INF`` poses and depth holes for the invalid paths; texture ``"checker"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from distillkit.geometry.pairs import make_pairs
from distillkit.scenes.data import SceneData
from distillkit.scenes.frames import rescale_K
from distillkit.scenes.sources import SEVEN_SCENES_DEPTH, SEVEN_SCENES_HW, SEVEN_SCENES_RGB, intrinsics

_DOWN = np.array([0.0, 1.0, 0.0])  # world +y is down (the floor is at +y)
_SINUSOID_AMPS = np.r_[np.full(6, 22.0), np.full(6, 12.0)]  # 6 coarse + 6 fine components


# ------------------------------------------------------------------------------------------------------ the room
def random_layout(rng, n_boxes):
    """(room_lo [3], room_hi [3], boxes [(centre, half-size, yaw rotation)]) of a random room."""
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


@dataclass
class Room:
    """Layout + texture: ``"smooth"`` (fixed per-surface tint + low-frequency pattern, no random parameters),
    ``"checker"`` (0.3 m checkerboard + six plane waves of 3-25 rad/m, over a per-surface tint) or ``"sinusoid"``
    (per surface and channel, twelve random 3-D sinusoids at two scales). Surface ids: 0-2 walls, 3 + b box b."""
    lo: np.ndarray
    hi: np.ndarray
    boxes: list
    tints: np.ndarray | None = None  # [n_surfaces, 3]: 0..1 (checker), 0..255 (sinusoid)
    waves: np.ndarray | None = None  # wave vectors (rad/m): [6, 3] (checker), [n_surfaces, 3, 12, 3] (sinusoid)
    phases: np.ndarray | None = None  # [6] (checker), [n_surfaces, 3, 12] (sinusoid)
    texture: str = "checker"

    def colour(self, P: np.ndarray, sid: np.ndarray) -> np.ndarray:
        """RGB uint8 [N, 3] of world points P [N, 3] on surfaces sid [N]."""
        if self.texture == "smooth":
            tint = np.stack((np.sin(sid * 1.7), np.sin(sid * 2.3 + 1), np.sin(sid * 3.1 + 2)), -1)
            pattern = np.sin(4 * P[:, :1]) * np.cos(4 * P[:, 2:3]) + np.sin(4 * P[:, 1:2])
            return np.clip(128 + 60 * tint + 50 * pattern, 0, 255).astype(np.uint8)
        if self.texture == "checker":
            checker = (np.floor(P / 0.3).sum(1) % 2) * 2 - 1
            waves = np.sin(P @ self.waves.T + self.phases).sum(1) / 3
            shade = np.clip(0.6 + 0.18 * checker + 0.22 * waves, 0.05, 1.0)
            return np.clip(255 * self.tints[sid] * shade[:, None], 0, 255).astype(np.uint8)
        col = np.empty((len(P), 3))
        for ch in range(3):
            arg = np.einsum("pd,pmd->pm", P, self.waves[sid, ch]) + self.phases[sid, ch]
            col[:, ch] = self.tints[sid, ch] + (_SINUSOID_AMPS * np.sin(arg)).sum(1)
        return np.clip(col, 0, 255).astype(np.uint8)


def make_room(seed: int | np.random.Generator = 0, n_boxes: int = 4, texture: str = "checker") -> Room:
    """A random room; texture parameters drawn right after the layout (from `seed`, or continuing a generator)."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    room = Room(*random_layout(rng, n_boxes), texture=texture)
    if texture == "checker":
        room.tints = rng.uniform(0.35, 1.0, (3 + n_boxes, 3))
        dirs = rng.standard_normal((6, 3))
        room.waves = dirs / np.linalg.norm(dirs, axis=1, keepdims=True) * np.geomspace(3.0, 25.0, 6)[:, None]
        room.phases = rng.uniform(0, 2 * math.pi, 6)
    elif texture == "sinusoid":
        n_surf = 6 + n_boxes  # wavelengths ~1.5 m (coarse) and ~0.5 m (fine)
        room.waves = np.concatenate([rng.normal(0, std, (n_surf, 3, 6, 3)) for std in (4.0, 12.0)], 2)
        room.phases = rng.uniform(0, 2 * math.pi, (n_surf, 3, 12))
        room.tints = rng.uniform(60, 200, (n_surf, 3))
    elif texture != "smooth":
        raise ValueError(f"texture must be 'smooth', 'checker' or 'sinusoid', got {texture!r}")
    return room


# ------------------------------------------------------------------------------------------------- rendering
def cast_rays(o, dirs, room_lo, room_hi, boxes):
    """Ray parameter (= depth, as rays have unit z in the camera) and surface id of the first hit."""
    with np.errstate(divide="ignore", invalid="ignore"):
        dsafe = np.where(np.abs(dirs) < 1e-12, 1e-12, dirs)
        t_wall = np.where(dsafe > 0, (room_hi - o) / dsafe, (room_lo - o) / dsafe)
        depth, sid = t_wall.min(1), t_wall.argmin(1)
        for b, (centre, half, Ry) in enumerate(boxes):
            ol = (o - centre) @ Ry
            dl = dirs @ Ry
            dl = np.where(np.abs(dl) < 1e-12, 1e-12, dl)
            t1, t2 = (-half - ol) / dl, (half - ol) / dl
            tmin, tmax = np.minimum(t1, t2).max(1), np.maximum(t1, t2).min(1)
            hit = (tmax >= tmin) & (tmin > 1e-6) & (tmin < depth)
            depth = np.where(hit, tmin, depth)
            sid = np.where(hit, 3 + b, sid)
    return depth, sid


def depth_discontinuities(depth, sid, rel: float = 0.02):
    """bool [H, W]: both pixels of every neighbour pair on different surfaces with a relative depth jump > `rel`."""
    disc = np.zeros(depth.shape, bool)
    for axis in (0, 1):
        a, b = [slice(None)] * 2, [slice(None)] * 2
        a[axis], b[axis] = slice(1, None), slice(None, -1)
        a, b = tuple(a), tuple(b)
        jump = (sid[a] != sid[b]) & (np.abs(depth[a] - depth[b]) > rel * np.minimum(depth[a], depth[b]))
        disc[a] |= jump
        disc[b] |= jump
    return disc


def render(room: Room, cam2world: np.ndarray, K: np.ndarray, hw: tuple[int, int], discontinuities: bool = False):
    """Exact z-depth [H, W], world points [H, W, 3] and RGB uint8 [H, W, 3] of one pinhole view (pixel centres at
    integer coordinates), and with `discontinuities` its depth-discontinuity mask [H, W]."""
    H, W = hw
    v, u = np.mgrid[:H, :W].astype(np.float64)
    rays = np.stack(((u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones((H, W))), -1).reshape(-1, 3)
    dirs = rays @ cam2world[:3, :3].T  # unit z in the camera: the ray parameter is the z-depth
    depth, sid = cast_rays(cam2world[:3, 3], dirs, room.lo, room.hi, room.boxes)
    P = cam2world[:3, 3] + depth[:, None] * dirs
    out = depth.reshape(H, W), P.reshape(H, W, 3), room.colour(P, sid).reshape(H, W, 3)
    return out + (depth_discontinuities(out[0], sid.reshape(H, W)),) if discontinuities else out


# ---------------------------------------------------------------------------------------------- camera paths
def pose(centre: np.ndarray, forward: np.ndarray, roll: float = 0.0) -> np.ndarray:
    """Camera-to-world [4, 4] (OpenCV axes) at `centre` with unit optical axis `forward`, image rows level with the
    world (+y down), then rolled by `roll` radians about the optical axis."""
    x = np.cross(_DOWN, forward)  # down x forward = right
    x /= np.linalg.norm(x)
    R = np.stack((x, np.cross(forward, x), forward), 1)
    if roll:
        c, s = math.cos(roll), math.sin(roll)
        R = R @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, centre
    return T


def look_at(centre: np.ndarray, target: np.ndarray, roll: float = 0.0) -> np.ndarray:
    z = target - centre
    return pose(centre, z / np.linalg.norm(z), roll)


def yaw_pitch_pose(centre: np.ndarray, yaw: float, pitch: float) -> np.ndarray:
    return pose(centre, np.array([math.sin(yaw) * math.cos(pitch), math.sin(pitch), math.cos(yaw) * math.cos(pitch)]))


def arc_path(rng: np.random.Generator, n: int, arc_deg: float = 200.0, radius: float = 2.1) -> np.ndarray:
    """`make_scene`'s cameras: ``[n, 4, 4]`` on a jittered arc at a random angle, looking near the room centre."""
    mid = rng.uniform(0, 2 * math.pi)
    angles = [mid] if n == 1 else mid + np.radians(arc_deg) * (np.arange(n) / (n - 1) - 0.5)
    c2w = []
    for th in angles:
        r = radius * (1 + rng.uniform(-0.05, 0.05))
        centre = np.array([r * math.sin(th), -0.3 + rng.uniform(-0.1, 0.1), r * math.cos(th)])
        target = np.array([rng.uniform(-0.3, 0.3), 0.4 + rng.uniform(-0.1, 0.1), rng.uniform(-0.3, 0.3)])
        c2w.append(look_at(centre, target))
    return np.array(c2w).reshape(n, 4, 4)


def camera_path(n: int, seed: int = 0, arc_deg: float = 110.0, radius: float = 2.0, height: float = -0.2,
                aim_offset: float = 0.0) -> np.ndarray:
    """``[n, 4, 4]`` camera-to-world poses along a smooth arc, looking past the room centre, slight bob/roll.
    The arc's start angle depends on `seed` only, so two paths with the same seed cover the same part of the room
    (`radius`, `height` and `aim_offset` (radians) vary the second pass)."""
    start = np.random.default_rng(seed + 1).uniform(0, 2 * math.pi)
    c2w = []
    for t in start + np.radians(arc_deg) * (np.arange(n) / max(n - 1, 1)):
        centre = np.array([radius * math.cos(t), height + 0.08 * math.sin(3 * t), radius * math.sin(t)])
        a = t + 2.2 + aim_offset
        c2w.append(look_at(centre, np.array([0.6 * math.cos(a), 0.5, 0.6 * math.sin(a)]), 0.04 * math.sin(2 * t)))
    return np.array(c2w).reshape(n, 4, 4)


def two_pass_path(n_frames: int, n_test: int, seed: int = 0) -> np.ndarray:
    """12-Scenes style: the test frames (first) are their own recording of the same part of the room, a second
    pass along the arc slightly closer, higher and aimed a little differently; the training frames follow."""
    test = camera_path(n_test, seed, radius=1.75, height=-0.32, aim_offset=0.15)
    return np.concatenate((test, camera_path(n_frames - n_test, seed)))


def lap_path(n: int, radius: float, height: float, phase: float, yaw_amp: float, pitch0: float,
             jitter: float) -> list[np.ndarray]:
    """One lap around the room centre, looking outwards and swinging left/right, bobbing up/down."""
    out = []
    for th in phase + 2 * math.pi * np.arange(n) / n:
        r = radius * (1 + jitter * math.sin(3 * th + phase))
        c = np.array([r * math.sin(th), height + 0.15 * math.sin(2 * th + phase), r * math.cos(th)])
        yaw = th + yaw_amp * math.sin(2.5 * th + phase)
        out.append(yaw_pitch_pose(c, yaw, pitch0 + 0.12 * math.sin(1.7 * th + 2 * phase)))
    return out


def laps_path(n_train: int, n_test: int) -> np.ndarray:
    """`synthetic_scene`'s ``[n_train + n_test, 4, 4]``: training frames on three laps (radius 0.8, 1.2 and 1.6 m,
    different heights and phases), then test frames on two laps in between (radius 1.0 and 1.4 m, other phases,
    headings and pitches): held out like a separate 12-Scenes test sequence, never a training frame's neighbour."""
    laps = ((0.8, -0.35, 0.0, 0.15), (1.2, -0.05, 0.9, 0.2), (1.6, -0.25, 2.1, 0.17))  # radius, height, phase, pitch
    sizes = [n_train // 3 + (k < n_train % 3) for k in range(3)]
    c2w = [T for (r, h, ph, pi), m in zip(laps, sizes) for T in lap_path(m, r, h, ph, 0.6, pi, 0.1)]
    c2w += lap_path(n_test - n_test // 2, 1.0, -0.2, 1.4, 0.55, 0.18, 0.08)
    c2w += lap_path(n_test // 2, 1.4, -0.15, 0.5, 0.55, 0.17, 0.08)
    return np.stack(c2w)


# ------------------------------------------------------------------------------- entry 1: pair predictions
def make_scene(n: int = 6, H: int = 48, W: int = 64, graph: str = "complete", noise: float = 0.01, seed: int = 0,
               focal: float | None = None, arc_deg: float = 200.0, radius: float = 2.1, n_boxes: int = 3,
               scale_range: tuple[float, float] = (0.3, 3.0), symmetrize: bool = True, conf_max: float = 18.0,
               conf_angle_deg: float = 55.0, conf_jitter: float = 0.25) -> dict:
    """A synthetic scene as a dict with the keys of ``ga_scene6.npz`` (``edges``, ``pred1_pts3d``,
    ``pred2_pts3d_in_other_view``, ``pred1_conf``, ``pred2_conf``, ``images_uint8``, ``gt_K``,
    ``gt_cam2world``, ``gt_depth``, ``gt_pts3d_world``, ``gt_pair_scales``, ``gt_depth_discontinuity``)."""
    rng = np.random.default_rng(seed)
    room = make_room(rng, n_boxes, texture="smooth")
    c2w = arc_path(rng, n, arc_deg, radius)
    f = 0.9 * W if focal is None else float(focal)
    K = np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1.0]])
    depth, world = np.empty((n, H, W), np.float32), np.empty((n, H, W, 3), np.float32)
    disc, images = np.empty((n, H, W), bool), np.empty((n, H, W, 3), np.uint8)
    for k in range(n):
        depth[k], world[k], images[k], disc[k] = render(room, c2w[k], K, (H, W), discontinuities=True)

    edges = make_pairs(n, graph, symmetrize=symmetrize)
    E = len(edges)
    scales = np.exp(rng.uniform(np.log(scale_range[0]), np.log(scale_range[1]), E))
    pred1, pred2 = np.empty((E, H, W, 3), np.float32), np.empty((E, H, W, 3), np.float32)
    conf1, conf2 = np.empty((E, H, W), np.float32), np.empty((E, H, W), np.float32)
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


# -------------------------------------------------------------------------------------- entry 2: SceneData
def synthetic_scene(n_train: int = 240, n_test: int = 40, H: int = 96, W: int = 128, seed: int = 0,
                    n_boxes: int = 4, focal: float | None = None, name: str | None = None,
                    hole_fraction: float = 0.0) -> SceneData:
    """A room (units are metres) with the ``"sinusoid"`` texture along `laps_path` (test frames last, split 1).
    X_w = T_c2w (d K^-1 [u, v, 1]) holds exactly. Confidence is 1 + a smooth function of depth, / 5 at depth
    discontinuities; `hole_fraction` masks out random blocks (tests the mask path)."""
    rng = np.random.default_rng(seed)
    room = make_room(rng, n_boxes, texture="sinusoid")
    f = 0.85 * W if focal is None else float(focal)
    K = np.array([[f, 0, (W - 1) / 2], [0, f, (H - 1) / 2], [0, 0, 1.0]])
    c2w = laps_path(n_train, n_test)
    n = len(c2w)
    images, pts = np.empty((n, H, W, 3), np.uint8), np.empty((n, H, W, 3), np.float32)
    conf = np.empty((n, H, W), np.float32)
    for k in range(n):
        d, pts[k], images[k], disc = render(room, c2w[k], K, (H, W), discontinuities=True)
        conf[k] = (1 + 4 * np.exp(-d / 4)) / np.where(disc, 5.0, 1.0)
    mask = np.ones((n, H, W), bool)
    if hole_fraction > 0:
        bh, bw = max(H // 8, 1), max(W // 8, 1)
        for k in range(n):
            for _ in range(int(round(hole_fraction * 64))):
                y, x = rng.integers(0, H - bh + 1), rng.integers(0, W - bw + 1)
                mask[k, y:y + bh, x:x + bw] = False
        pts[~mask] = np.nan  # invalid targets are not even finite: the loss must never see them
    split = np.r_[np.zeros(n_train, np.int8), np.ones(n_test, np.int8)]
    return SceneData.from_arrays(images=images, pts3d=pts, K=K, conf=conf, mask=mask, split=split,
                                 gt_cam2world=c2w, name=name or f"synthetic-{seed}")


# ------------------------------------------------------------------------------- entry 3: dataset writers
def _pose_text(M: np.ndarray | None) -> str:
    if M is None:
        return "\n".join(["INF INF INF INF"] * 4) + "\n"
    return "\n".join(" ".join(f"{x:.9f}" for x in row) for row in M) + "\n"


def _matrix_line(K: np.ndarray) -> str:
    M = np.eye(4)
    M[:3, :3] = K
    return " ".join(f"{x:.10g}" for x in M.ravel())


def _pick(n: int, k: int, rng: np.random.Generator, avoid: set[int] = frozenset()) -> set[int]:
    cand = [i for i in range(1, n - 1) if i not in avoid]  # keep the ends valid: the path stays anchored
    return set(rng.choice(cand, size=min(k, len(cand)), replace=False).tolist()) if cand and k else set()


def _write_frame(stem: Path, room: Room, c2w: np.ndarray, color: tuple, depth: tuple, max_mm: int,
                 hole: int | None, rng: np.random.Generator, valid_pose: bool = True, ext: str = "png", **save):
    """``stem.color.<ext>``, ``stem.depth.png`` (uint16 mm, clipped to `max_mm`, with a rectangular hole of value
    `hole` unless None) and ``stem.pose.txt`` of one frame; `color`, `depth`: (K, hw)."""
    Image.fromarray(render(room, c2w, *color)[2]).save(f"{stem}.color.{ext}", **save)
    mm = np.clip(np.rint(render(room, c2w, *depth)[0] * 1000), 0, max_mm).astype(np.uint16)
    if hole is not None:
        H, W = mm.shape
        h, w = max(1, H // 4), max(1, W // 4)
        y0, x0 = rng.integers(0, H - h + 1), rng.integers(0, W - w + 1)
        mm[y0:y0 + h, x0:x0 + w] = hole
    Image.fromarray(mm).save(f"{stem}.depth.png")
    Path(f"{stem}.pose.txt").write_text(_pose_text(c2w if valid_pose else None))


def write_12scenes(out: str | Path, n_frames: int = 24, color_hw: tuple[int, int] = (968, 1296),
                   depth_hw: tuple[int, int] = (480, 640), seed: int = 0, n_test: int | None = None,
                   n_inf: int = 2, n_holes: int = 2, jpeg_quality: int = 95, two_pass: bool = True,
                   on_frame=None) -> dict:
    """A synthetic scene folder in the 12-Scenes layout; with `two_pass` the test frames (split.txt's sequence0)
    are a separate pass over the same part of the room, as in the real dataset, else the first frames of one
    arc (test poses outside the training poses). Returns the ground truth it was written from:
    ``room``, ``cam2world`` [n,4,4] (rows of INF frames included), ``color_K``, ``depth_K``, ``inf`` (frame
    indices with INF poses), ``holes`` (frame indices with depth holes), ``n_test``."""
    out = Path(out)
    (out / "data").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 2)
    room = make_room(seed)
    n_test = max(1, n_frames // 4) if n_test is None else n_test
    c2w = two_pass_path(n_frames, n_test, seed) if two_pass else camera_path(n_frames, seed)
    (Hc, Wc), (Hd, Wd) = color_hw, depth_hw
    fc = 0.894 * Wc  # 12-Scenes: fx 1158 at 1296 px
    Kc = intrinsics(fc, fc, (Wc - 1) / 2, (Hc - 1) / 2)
    fd = fc * Hd / Hc  # depth focal = colour focal x 480/968 (notes §3.5)
    Kd = intrinsics(fd, fd, (Wd - 1) / 2, (Hd - 1) / 2)
    inf = _pick(n_frames, n_inf, rng)
    holes = _pick(n_frames, n_holes, rng, inf)
    for k in range(n_frames):
        _write_frame(out / "data" / f"frame-{k:06d}", room, c2w[k], (Kc, color_hw), (Kd, depth_hw), 65535,
                     0 if k in holes else None, rng, k not in inf, "jpg", quality=jpeg_quality)
        if on_frame:
            on_frame()
    eye = _matrix_line(np.eye(3))
    info = [("m_versionNumber", "4"), ("m_sensorName", "StructureSensor (distillkit synthetic)"),
            ("m_colorWidth", Wc), ("m_colorHeight", Hc), ("m_depthWidth", Wd), ("m_depthHeight", Hd),
            ("m_depthShift", 1000), ("m_calibrationColorIntrinsic", _matrix_line(Kc)),
            ("m_calibrationColorExtrinsic", eye), ("m_calibrationDepthIntrinsic", _matrix_line(Kd)),
            ("m_calibrationDepthExtrinsic", eye), ("m_frames.size", n_frames)]
    (out / "info.txt").write_text("".join(f"{k} = {v}\n" for k, v in info))
    (out / "split.txt").write_text(
        f"sequence0 [frames={n_test}]  [start=0 ; end={n_test - 1}]\n"
        f"sequence1 [frames={n_frames - n_test}]  [start={n_test} ; end={n_frames - 1}]\n")
    return {"room": room, "cam2world": c2w, "color_K": Kc, "depth_K": Kd, "inf": sorted(inf),
            "holes": sorted(holes), "n_test": n_test, "color_hw": color_hw, "depth_hw": depth_hw}


def write_7scenes(out: str | Path, n_frames: int = 16, color_hw: tuple[int, int] = SEVEN_SCENES_HW,
                  depth_hw: tuple[int, int] = SEVEN_SCENES_HW, seed: int = 0, test_every: int = 4,
                  n_holes: int = 2, on_frame=None) -> dict:
    """The same kind of scene in the 7-Scenes layout: frames on the path alternate between ``seq-01``
    (TrainSplit) and, every ``test_every``-th, ``seq-02`` (TestSplit); PNG colour; 65535 = invalid depth.
    Depth is rendered with the 7-Scenes depth intrinsics (f 585) so the reader's assumption holds exactly."""
    out = Path(out)
    rng = np.random.default_rng(seed + 3)
    room = make_room(seed)
    c2w = camera_path(n_frames, seed)
    Kc = rescale_K(intrinsics(*SEVEN_SCENES_RGB), SEVEN_SCENES_HW, color_hw)
    Kd = rescale_K(intrinsics(*SEVEN_SCENES_DEPTH), SEVEN_SCENES_HW, depth_hw)
    holes = _pick(n_frames, n_holes, rng)
    index = {}
    counters = {"seq-01": 0, "seq-02": 0}
    for k in range(n_frames):
        seq = "seq-02" if k % test_every == test_every - 1 else "seq-01"
        (out / seq).mkdir(parents=True, exist_ok=True)
        index[k] = f"{seq}/frame-{counters[seq]:06d}"
        counters[seq] += 1
        _write_frame(out / index[k], room, c2w[k], (Kc, color_hw), (Kd, depth_hw), 65534,
                     65535 if k in holes else None, rng)
        if on_frame:
            on_frame()
    (out / "TrainSplit.txt").write_text("sequence1\n")
    (out / "TestSplit.txt").write_text("sequence2\n")
    return {"room": room, "cam2world": c2w, "color_K": Kc, "depth_K": Kd, "holes": sorted(holes),
            "frame_ids": index, "color_hw": color_hw, "depth_hw": depth_hw}


def write_dataset(out: str | Path, scenes: int = 2, layout: str = "12scenes", seed: int = 0, **kw) -> list[Path]:
    """Several synthetic scenes side by side (``synth_office_0``, ...), like a dataset root. `on_frame` (in `kw`)
    is called after each frame is written."""
    writer = write_12scenes if layout == "12scenes" else write_7scenes
    paths = [Path(out) / f"synth_office_{s}" for s in range(scenes)]
    for s, p in enumerate(paths):
        writer(p, seed=seed + 17 * s, **kw)
    return paths
