"""Synthetic scenes written in the raw 12-Scenes (or 7-Scenes) layout, so the readers are tested end to end.

A textured box room with a few boxes standing on the floor (``geometry.synthetic``'s layout and exact ray
caster), seen along a smooth handheld-like arc. Written exactly as the real datasets are
(``shared/notes/distill.md`` §3.5-3.8): colour JPEG (12-Scenes) or PNG (7-Scenes), a lower-resolution
registered uint16 depth in millimetres, 4x4 camera-to-world pose text files, ``info.txt`` + ``split.txt`` or
``TrainSplit.txt`` / ``TestSplit.txt``. A few frames get ``INF`` poses (lost tracking) and a few depth maps
get rectangular holes (0, or 65535 in 7-Scenes), to exercise the invalid paths.

The texture is a solid (3-D) pattern evaluated at the world point, so every view sees the same surface
pattern: a 0.3 m checkerboard and six random plane waves of 3-25 rad/m over a per-surface tint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from distillkit.scenes.synthetic import cast_rays, random_layout
from distillkit.scenes.frames import rescale_K
from distillkit.scenes.sources import SEVEN_SCENES_DEPTH, SEVEN_SCENES_HW, SEVEN_SCENES_RGB, intrinsics


@dataclass
class Room:
    lo: np.ndarray
    hi: np.ndarray
    boxes: list
    tints: np.ndarray  # [n_surfaces, 3] in 0..1
    waves: np.ndarray  # [6, 3] plane-wave vectors (rad/m)
    phases: np.ndarray  # [6]


def make_room(seed: int = 0, n_boxes: int = 4) -> Room:
    rng = np.random.default_rng(seed)
    lo, hi, boxes = random_layout(rng, n_boxes)
    tints = rng.uniform(0.35, 1.0, (3 + n_boxes, 3))
    dirs = rng.standard_normal((6, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    waves = dirs * np.geomspace(3.0, 25.0, 6)[:, None]
    return Room(lo, hi, boxes, tints, waves, rng.uniform(0, 2 * math.pi, 6))


def render(room: Room, cam2world: np.ndarray, K: np.ndarray, hw: tuple[int, int]):
    """Exact z-depth [H, W], world points [H, W, 3] and RGB uint8 [H, W, 3] of one pinhole view."""
    H, W = hw
    v, u = np.mgrid[:H, :W].astype(np.float64)
    rays = np.stack(((u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones((H, W))), -1).reshape(-1, 3)
    dirs = rays @ cam2world[:3, :3].T  # unit z in the camera: the ray parameter is the z-depth
    depth, sid = cast_rays(cam2world[:3, 3], dirs, room.lo, room.hi, room.boxes)
    P = cam2world[:3, 3] + depth[:, None] * dirs
    checker = (np.floor(P / 0.3).sum(1) % 2) * 2 - 1
    waves = np.sin(P @ room.waves.T + room.phases).sum(1) / 3
    shade = np.clip(0.6 + 0.18 * checker + 0.22 * waves, 0.05, 1.0)
    rgb = np.clip(255 * room.tints[sid] * shade[:, None], 0, 255).astype(np.uint8)
    return depth.reshape(H, W), P.reshape(H, W, 3), rgb.reshape(H, W, 3)


def _look_at(centre: np.ndarray, target: np.ndarray, roll: float = 0.0) -> np.ndarray:
    z = target - centre
    z /= np.linalg.norm(z)
    x = np.cross(np.array([0.0, 1.0, 0.0]), z)  # +y is down: down x forward = right
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack((x, y, z), 1)
    c, s = math.cos(roll), math.sin(roll)
    return R @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def camera_path(n: int, seed: int = 0, arc_deg: float = 110.0, radius: float = 2.0, height: float = -0.2,
                aim_offset: float = 0.0) -> np.ndarray:
    """``[n, 4, 4]`` camera-to-world poses along a smooth arc, looking past the room centre, slight bob/roll.
    The arc's start angle depends on `seed` only, so two paths with the same seed cover the same part of the room
    (`radius`, `height` and `aim_offset` (radians) vary the second pass)."""
    rng = np.random.default_rng(seed + 1)
    start = rng.uniform(0, 2 * math.pi)
    th = start + np.radians(arc_deg) * (np.arange(n) / max(n - 1, 1))
    c2w = np.tile(np.eye(4), (n, 1, 1))
    for k, t in enumerate(th):
        centre = np.array([radius * math.cos(t), height + 0.08 * math.sin(3 * t), radius * math.sin(t)])
        a = t + 2.2 + aim_offset
        target = np.array([0.6 * math.cos(a), 0.5, 0.6 * math.sin(a)])
        c2w[k, :3, :3] = _look_at(centre, target, 0.04 * math.sin(2 * t))
        c2w[k, :3, 3] = centre
    return c2w


def two_pass_path(n_frames: int, n_test: int, seed: int = 0) -> np.ndarray:
    """12-Scenes style: the test frames (first) are their own recording of the same part of the room, a second
    pass along the arc slightly closer, higher and aimed a little differently; the training frames follow."""
    test = camera_path(n_test, seed, radius=1.75, height=-0.32, aim_offset=0.15)
    return np.concatenate((test, camera_path(n_frames - n_test, seed)))


def _pose_text(M: np.ndarray | None) -> str:
    if M is None:
        return "\n".join(["INF INF INF INF"] * 4) + "\n"
    return "\n".join(" ".join(f"{x:.9f}" for x in row) for row in M) + "\n"


def _matrix_line(K: np.ndarray) -> str:
    M = np.eye(4)
    M[:3, :3] = K
    return " ".join(f"{x:.10g}" for x in M.ravel())


def _holes(depth_mm: np.ndarray, rng: np.random.Generator, value: int) -> None:
    H, W = depth_mm.shape
    h, w = max(1, H // 4), max(1, W // 4)
    y0, x0 = rng.integers(0, H - h + 1), rng.integers(0, W - w + 1)
    depth_mm[y0:y0 + h, x0:x0 + w] = value


def _pick(n: int, k: int, rng: np.random.Generator, avoid: set[int] = frozenset()) -> set[int]:
    cand = [i for i in range(1, n - 1) if i not in avoid]  # keep the ends valid: the path stays anchored
    return set(rng.choice(cand, size=min(k, len(cand)), replace=False).tolist()) if cand and k else set()


def write_12scenes(out: str | Path, n_frames: int = 24, color_hw: tuple[int, int] = (968, 1296),
                   depth_hw: tuple[int, int] = (480, 640), seed: int = 0, n_test: int | None = None,
                   n_inf: int = 2, n_holes: int = 2, jpeg_quality: int = 95, two_pass: bool = True) -> dict:
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
    Hc, Wc = color_hw
    Hd, Wd = depth_hw
    fc = 0.894 * Wc  # 12-Scenes: fx 1158 at 1296 px
    Kc = intrinsics(fc, fc, (Wc - 1) / 2, (Hc - 1) / 2)
    fd = fc * Hd / Hc  # depth focal = colour focal x 480/968 (notes §3.5)
    Kd = intrinsics(fd, fd, (Wd - 1) / 2, (Hd - 1) / 2)
    inf = _pick(n_frames, n_inf, rng)
    holes = _pick(n_frames, n_holes, rng, inf)
    for k in range(n_frames):
        stem = out / "data" / f"frame-{k:06d}"
        _, _, rgb = render(room, c2w[k], Kc, color_hw)
        Image.fromarray(rgb).save(f"{stem}.color.jpg", quality=jpeg_quality)
        depth, _, _ = render(room, c2w[k], Kd, depth_hw)
        mm = np.clip(np.rint(depth * 1000), 0, 65535).astype(np.uint16)
        if k in holes:
            _holes(mm, rng, 0)
        Image.fromarray(mm).save(f"{stem}.depth.png")
        Path(f"{stem}.pose.txt").write_text(_pose_text(None if k in inf else c2w[k]))
    info = [("m_versionNumber", "4"), ("m_sensorName", "StructureSensor (distillkit synthetic)"),
            ("m_colorWidth", Wc), ("m_colorHeight", Hc), ("m_depthWidth", Wd), ("m_depthHeight", Hd),
            ("m_depthShift", 1000), ("m_calibrationColorIntrinsic", _matrix_line(Kc)),
            ("m_calibrationColorExtrinsic", _matrix_line(np.eye(3))),
            ("m_calibrationDepthIntrinsic", _matrix_line(Kd)),
            ("m_calibrationDepthExtrinsic", _matrix_line(np.eye(3))), ("m_frames.size", n_frames)]
    (out / "info.txt").write_text("".join(f"{k} = {v}\n" for k, v in info))
    (out / "split.txt").write_text(
        f"sequence0 [frames={n_test}]  [start=0 ; end={n_test - 1}]\n"
        f"sequence1 [frames={n_frames - n_test}]  [start={n_test} ; end={n_frames - 1}]\n")
    return {"room": room, "cam2world": c2w, "color_K": Kc, "depth_K": Kd, "inf": sorted(inf),
            "holes": sorted(holes), "n_test": n_test, "color_hw": color_hw, "depth_hw": depth_hw}


def write_7scenes(out: str | Path, n_frames: int = 16, color_hw: tuple[int, int] = SEVEN_SCENES_HW,
                  depth_hw: tuple[int, int] = SEVEN_SCENES_HW, seed: int = 0, test_every: int = 4,
                  n_holes: int = 2) -> dict:
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
        stem = out / seq / f"frame-{counters[seq]:06d}"
        index[k] = f"{seq}/frame-{counters[seq]:06d}"
        counters[seq] += 1
        _, _, rgb = render(room, c2w[k], Kc, color_hw)
        Image.fromarray(rgb).save(f"{stem}.color.png")
        depth, _, _ = render(room, c2w[k], Kd, depth_hw)
        mm = np.clip(np.rint(depth * 1000), 0, 65534).astype(np.uint16)
        if k in holes:
            _holes(mm, rng, 65535)
        Image.fromarray(mm).save(f"{stem}.depth.png")
        Path(f"{stem}.pose.txt").write_text(_pose_text(c2w[k]))
    (out / "TrainSplit.txt").write_text("sequence1\n")
    (out / "TestSplit.txt").write_text("sequence2\n")
    return {"room": room, "cam2world": c2w, "color_K": Kc, "depth_K": Kd, "holes": sorted(holes),
            "frame_ids": index, "color_hw": color_hw, "depth_hw": depth_hw}


def write_dataset(out: str | Path, scenes: int = 2, layout: str = "12scenes", seed: int = 0, **kw) -> list[Path]:
    """Several synthetic scenes side by side (``synth_office_0``, ...), like a dataset root."""
    writer = write_12scenes if layout == "12scenes" else write_7scenes
    paths = []
    for s in range(scenes):
        p = Path(out) / f"synth_office_{s}"
        writer(p, seed=seed + 17 * s, **kw)
        paths.append(p)
    return paths
