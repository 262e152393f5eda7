"""`SceneData`: one scene's frames with pixel-aligned world-frame pointmaps, for scene-specific pointmap students.

A small, in-memory (numpy-backed) interface: the trainer (`distillkit.training.pointmap.trainer`) and the pose evaluation
(`distillkit.training.pointmap.metrics`) take nothing else. Three ways to get one:

* `SceneData.from_arrays(...)`: any arrays (validated, defaults filled in);
* `SceneData.from_store(url, scene)`: an aligned scene of a DUSt3R scene store (`distillkit cache-scenes`);
* `synthetic_scene(...)`: a ray-cast box room with *exact* world pointmaps, K and camera poses (tests, benchmarks).

Conventions: images uint8 [n, H, W, 3]; pts3d float32 [n, H, W, 3] in the world frame (metres where the scene is
metric); conf float32 [n, H, W] (DUSt3R confidences are >= 1; 1 = no information); mask bool [n, H, W] (valid
targets); K [n, 3, 3] pinhole intrinsics of the *stored* resolution with OpenCV pixel centres (pixel (u, v) has its
centre at integer coordinates); split int8 [n] (0 = train/mapping, 1 = held-out test); poses are camera-to-world
[n, 4, 4] with OpenCV camera axes (x right, y down, z forward).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

STORE_ARRAYS_REQUIRED = ("image", "pts3d", "conf", "intrinsics", "mask", "cam2world", "split")


@dataclass
class SceneData:
    images: np.ndarray
    pts3d: np.ndarray
    conf: np.ndarray
    mask: np.ndarray
    K: np.ndarray
    split: np.ndarray
    name: str = "scene"
    gt_cam2world: np.ndarray | None = None  # ground-truth poses (e.g. 12-Scenes' own), for PnP evaluation
    cam2world: np.ndarray | None = None  # the teacher's aligned poses (used for PnP evaluation when no GT)
    notes: list[str] = field(default_factory=list)

    # ----------------------------------------------------------------------------------------------- constructors
    @classmethod
    def from_arrays(cls, images, pts3d, K, conf=None, mask=None, split=None, gt_cam2world=None, cam2world=None,
                    name: str = "scene", test_every: int = 8) -> "SceneData":
        """Validate and normalise arrays. Defaults: conf = 1, mask = finite target, split = every `test_every`-th
        frame held out (recorded in `notes`). Non-finite target points are always masked out (and zeroed)."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 [n, H, W, 3], got {images.dtype} {images.shape}")
        n, H, W, _ = images.shape
        pts3d = np.asarray(pts3d, dtype=np.float32)
        if pts3d.shape != (n, H, W, 3):
            raise ValueError(f"pts3d must be [n, H, W, 3] = {(n, H, W, 3)}, got {pts3d.shape}")
        finite = np.isfinite(pts3d).all(-1)
        notes: list[str] = []
        conf = np.ones((n, H, W), np.float32) if conf is None else np.asarray(conf, dtype=np.float32)
        if conf.shape != (n, H, W):
            raise ValueError(f"conf must be [n, H, W] = {(n, H, W)}, got {conf.shape}")
        mask = finite if mask is None else (np.asarray(mask).astype(bool) & finite)
        if mask.shape != (n, H, W):
            raise ValueError(f"mask must be [n, H, W] = {(n, H, W)}, got {mask.shape}")
        if not finite.all():
            pts3d = np.where(finite[..., None], pts3d, 0).astype(np.float32)
            notes.append(f"{int((~finite).sum())} non-finite target points masked out")
        K = np.asarray(K, dtype=np.float64)
        if K.shape == (3, 3):
            K = np.broadcast_to(K, (n, 3, 3)).copy()
        if K.shape != (n, 3, 3):
            raise ValueError(f"K must be [n, 3, 3] or [3, 3], got {K.shape}")
        if split is None:
            split = (np.arange(n) % test_every == test_every - 1).astype(np.int8)
            notes.append(f"no split given: every {test_every}th frame held out")
        split = np.asarray(split).astype(np.int8).reshape(-1)
        if split.shape != (n,) or not np.isin(split, (0, 1)).all():
            raise ValueError(f"split must be [n] of 0 (train) / 1 (test), got {split.shape} {np.unique(split)}")
        if not (split == 0).any():
            raise ValueError("split has no training frames")
        poses = {}
        for key, val in (("gt_cam2world", gt_cam2world), ("cam2world", cam2world)):
            if val is not None:
                val = np.asarray(val, dtype=np.float64)
                if val.shape != (n, 4, 4):
                    raise ValueError(f"{key} must be [n, 4, 4], got {val.shape}")
            poses[key] = val
        return cls(images=images, pts3d=pts3d, conf=conf, mask=mask, K=K, split=split, name=name, notes=notes,
                   **poses)

    @classmethod
    def from_store(cls, url: str, scene: str, storage_options: dict[str, Any] | None = None,
                   test_every: int = 8) -> "SceneData":
        """One aligned scene of a DUSt3R scene store (``distillkit_schemas/scenes.py``; local path or fsspec URL).

        Reads ``scenes/<scene>/{image, pts3d, conf, mask, intrinsics, cam2world, split, gt_cam2world?}``: the
        globally aligned world pointmaps with their confidences and validity mask, the intrinsics at the stored
        resolution, the aligned (teacher) poses, the dataset's split (0 train / 1 test; when it holds no test frame,
        e.g. an image folder, every `test_every`-th frame is held out) and, where the dataset has them, its
        ground-truth poses (used for pose evaluation). The scene must be aligned (``progress/scene_done``).
        """
        from distillkit.scenes.store import require_aligned

        group, manifest = _open_scene_store(url, storage_options)
        try:
            require_aligned(group, manifest, scene)
        except ValueError as e:
            raise ValueError(f"{url}: {e}") from None
        sg = group[f"scenes/{scene}"]
        present = set(sg.array_keys())
        missing = [a for a in STORE_ARRAYS_REQUIRED if a not in present]
        if missing:
            raise ValueError(f"{url}: scenes/{scene} lacks {missing} (has {sorted(present)})")

        def read(key: str):
            return np.asarray(sg[key][...]) if key in present else None

        split = read("split")
        if not (split == 1).any():
            split = None  # no test frame in the dataset's split: from_arrays holds out every test_every-th (noted)
        data = cls.from_arrays(images=read("image"), pts3d=read("pts3d"), K=read("intrinsics"), conf=read("conf"),
                               mask=read("mask"), split=split, gt_cam2world=read("gt_cam2world"),
                               cam2world=read("cam2world"), name=scene, test_every=test_every)
        if data.gt_cam2world is not None and not np.isfinite(data.gt_cam2world).all():
            data.gt_cam2world = None  # (the readers skip frames without GT pose, so this is a safety net)
            data.notes.append("some frames lack ground-truth poses: pose metrics use the aligned poses")
        return data

    # ------------------------------------------------------------------------------------------------ properties
    @property
    def n(self) -> int:
        return int(self.images.shape[0])

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])

    @property
    def train_idx(self) -> np.ndarray:
        return np.flatnonzero(self.split == 0)

    @property
    def test_idx(self) -> np.ndarray:
        return np.flatnonzero(self.split == 1)

    @property
    def eval_poses(self) -> tuple[np.ndarray | None, str]:
        """Reference poses for PnP evaluation: ground truth when the dataset has it, else the teacher's."""
        if self.gt_cam2world is not None:
            return self.gt_cam2world, "gt"
        if self.cam2world is not None:
            return self.cam2world, "teacher"
        return None, "none"

    def target_stats(self, idx: np.ndarray | None = None) -> tuple[np.ndarray, float]:
        """(centre [3], scale) of the valid target points of frames `idx` (default: training frames): the mean and
        the RMS distance to it. The students predict offsets from this centre in units of this scale."""
        idx = self.train_idx if idx is None else idx
        pts = self.pts3d[idx][self.mask[idx]].astype(np.float64)
        if len(pts) == 0:
            raise ValueError(f"scene {self.name}: no valid target points in the training frames")
        centre = pts.mean(0)
        scale = float(np.sqrt(((pts - centre) ** 2).sum(1).mean()))
        return centre, max(scale, 1e-6)

    def extent(self) -> float:
        """Scene extent: diagonal of the bounding box of all valid target points (0.5-99.5 percentiles, so a few
        stray teacher points do not inflate it)."""
        pts = self.pts3d[self.mask]
        lo, hi = np.percentile(pts, 0.5, axis=0), np.percentile(pts, 99.5, axis=0)
        return float(np.linalg.norm(hi - lo))

    def summary(self) -> dict:
        return {"name": self.name, "frames": self.n, "train": int((self.split == 0).sum()),
                "test": int((self.split == 1).sum()), "hw": list(self.hw), "extent": round(self.extent(), 4),
                "valid_fraction": round(float(self.mask.mean()), 4), "eval_poses": self.eval_poses[1],
                "notes": list(self.notes)}

    def save_npz(self, path) -> None:
        arrays = {k: getattr(self, k) for k in ("images", "pts3d", "conf", "mask", "K", "split")}
        arrays.update({k: getattr(self, k) for k in ("gt_cam2world", "cam2world") if getattr(self, k) is not None})
        np.savez(path, name=np.array(self.name), **arrays)

    @classmethod
    def load_npz(cls, path) -> "SceneData":
        with np.load(path) as z:
            kw = {k: z[k] for k in z.files if k != "name"}
            return cls.from_arrays(name=str(z["name"]) if "name" in z.files else "scene", **kw)


# --------------------------------------------------------------------------------------------- synthetic scene
def _yaw_pitch_c2w(centre: np.ndarray, yaw: float, pitch: float) -> np.ndarray:
    """Camera-to-world with OpenCV axes (+y down in the world too: the synthetic room's floor is at +y)."""
    fwd = np.array([math.sin(yaw) * math.cos(pitch), math.sin(pitch), math.cos(yaw) * math.cos(pitch)])
    x = np.cross(np.array([0.0, 1.0, 0.0]), fwd)
    x /= np.linalg.norm(x)
    y = np.cross(fwd, x)
    T = np.eye(4)
    T[:3, :3] = np.stack((x, y, fwd), 1)
    T[:3, 3] = centre
    return T


def synthetic_scene(n_train: int = 240, n_test: int = 40, H: int = 96, W: int = 128, seed: int = 0,
                    n_boxes: int = 4, focal: float | None = None, name: str | None = None,
                    hole_fraction: float = 0.0) -> SceneData:
    """A box room (about 6 x 3.2 x 6 m, units are metres) with textured walls and a few boxes, rendered by exact
    ray casting (`distillkit.scenes.synthetic`) along camera paths: the training frames come from three laps
    around the room centre looking outwards and swinging left/right (radius 0.8, 1.2 and 1.6 m, different heights
    and phases), the test frames from two other laps in between (radius 1.0 and 1.4 m, other phases, headings and
    pitches): held out like a separate 12-Scenes test sequence, never a training frame's neighbour.
    X_w = T_c2w (d K^-1 [u, v, 1]) holds exactly. Texture: per surface, a sum of random 3-D sinusoids in world
    coordinates at two scales (aperiodic at scene scale, so a location is recognisable from its appearance).
    Confidence is 1 + a smooth function, / 5 at depth discontinuities; `hole_fraction` masks out random blocks (tests the mask path).
    """
    from distillkit.scenes.synthetic import cast_rays, depth_discontinuities, random_layout

    rng = np.random.default_rng(seed)
    room_lo, room_hi, boxes = random_layout(rng, n_boxes)
    f = 0.85 * W if focal is None else float(focal)
    K = np.array([[f, 0, (W - 1) / 2], [0, f, (H - 1) / 2], [0, 0, 1.0]])

    def lap(n, radius, height, phase, yaw_amp, pitch0, jitter):
        t = phase + 2 * math.pi * np.arange(n) / n
        out = []
        for th in t:
            r = radius * (1 + jitter * math.sin(3 * th + phase))
            c = np.array([r * math.sin(th), height + 0.15 * math.sin(2 * th + phase), r * math.cos(th)])
            yaw = th + yaw_amp * math.sin(2.5 * th + phase)  # looking outwards, swinging left/right
            pitch = pitch0 + 0.12 * math.sin(1.7 * th + 2 * phase)
            out.append(_yaw_pitch_c2w(c, yaw, pitch))
        return out

    laps = ((0.8, -0.35, 0.0, 0.15), (1.2, -0.05, 0.9, 0.2), (1.6, -0.25, 2.1, 0.17))  # radius, height, phase, pitch
    sizes = [n_train // 3 + (k < n_train % 3) for k in range(3)]
    c2w = [T for (r, h, ph, pi), m in zip(laps, sizes) for T in lap(m, r, h, ph, 0.6, pi, 0.1)]
    c2w += lap(n_test - n_test // 2, 1.0, -0.2, 1.4, 0.55, 0.18, 0.08)
    c2w += lap(n_test // 2, 1.4, -0.15, 0.5, 0.55, 0.17, 0.08)
    c2w = np.stack(c2w)
    n = len(c2w)
    split = np.r_[np.zeros(n_train, np.int8), np.ones(n_test, np.int8)]

    n_surf = 6 + n_boxes
    # surface, colour channel, component, xyz: 6 coarse (wavelength ~1.5 m) + 6 fine (~0.5 m) components
    freqs = np.concatenate((rng.normal(0, 4.0, (n_surf, 3, 6, 3)), rng.normal(0, 12.0, (n_surf, 3, 6, 3))), 2)
    amps = np.r_[np.full(6, 22.0), np.full(6, 12.0)]
    phases = rng.uniform(0, 2 * math.pi, (n_surf, 3, 12))
    tints = rng.uniform(60, 200, (n_surf, 3))

    v, u = np.mgrid[:H, :W]
    rays = np.stack(((u - K[0, 2]) / f, (v - K[1, 2]) / f, np.ones((H, W))), -1).reshape(-1, 3)
    images = np.empty((n, H, W, 3), np.uint8)
    pts = np.empty((n, H, W, 3), np.float32)
    conf = np.empty((n, H, W), np.float32)
    for k in range(n):
        dirs = rays @ c2w[k, :3, :3].T
        d, sid = cast_rays(c2w[k, :3, 3], dirs, room_lo, room_hi, boxes)
        P = c2w[k, :3, 3] + d[:, None] * dirs
        pts[k] = P.reshape(H, W, 3)
        col = np.empty((len(P), 3))
        for ch in range(3):
            arg = np.einsum("pd,pmd->pm", P, freqs[sid, ch]) + phases[sid, ch]
            col[:, ch] = tints[sid, ch] + (amps * np.sin(arg)).sum(1)
        images[k] = np.clip(col, 0, 255).astype(np.uint8).reshape(H, W, 3)
        disc = depth_discontinuities(d.reshape(H, W), sid.reshape(H, W))
        conf[k] = (1 + 4 * np.exp(-d / 4)).reshape(H, W) / np.where(disc, 5.0, 1.0)
    mask = np.ones((n, H, W), bool)
    if hole_fraction > 0:
        bh, bw = max(H // 8, 1), max(W // 8, 1)
        for k in range(n):
            for _ in range(int(round(hole_fraction * 64))):
                y, x = rng.integers(0, H - bh + 1), rng.integers(0, W - bw + 1)
                mask[k, y:y + bh, x:x + bw] = False
        pts[~mask] = np.nan  # invalid targets are not even finite: the loss must never see them
    return SceneData.from_arrays(images=images, pts3d=pts, K=K, conf=conf, mask=mask, split=split,
                                 gt_cam2world=c2w, name=name or f"synthetic-{seed}")


def _open_scene_store(url: str, storage_options: dict[str, Any] | None):
    """(group, manifest) of a scene store; a clear error for anything else."""
    from distillkit.scenes.store import open_store
    from distillkit_schemas.scenes import read_scene_manifest

    try:
        group = open_store(url, "r", storage_options)
        return group, read_scene_manifest(group)
    except (FileNotFoundError, KeyError, ValueError) as e:
        raise ValueError(f"{url}: not a readable DUSt3R scene store ({e})") from None


def aligned_scenes(url: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Names of the aligned scenes of a scene store, in store order."""
    from distillkit.scenes.store import done_flags

    group, manifest = _open_scene_store(url, storage_options)
    return [s for s, d in zip(manifest.scenes, done_flags(group)[1]) if d]


# -------------------------------------------------------------------------------------------- data references
@functools.lru_cache(maxsize=4)
def _load_cached(spec_json: str) -> SceneData:
    spec = json.loads(spec_json)
    if "npz" in spec:
        return SceneData.load_npz(spec["npz"])
    if "store" in spec:
        return SceneData.from_store(spec["store"], spec["scene"], spec.get("storage_options"),
                                    spec.get("test_every", 8))
    if "synthetic" in spec:
        return synthetic_scene(**spec["synthetic"])
    raise ValueError(f"scene spec needs one of 'npz', 'store' (+ 'scene'), 'synthetic'; got {sorted(spec)}")


def load_scene(spec: dict) -> SceneData:
    """A scene from a small JSON-able reference (what flows pass around instead of arrays):
    ``{"npz": path}``, ``{"store": url, "scene": name, "storage_options": {...}}`` or ``{"synthetic": {kwargs of
    synthetic_scene}}``. Loaded once per process (LRU cache): the runs of an ablation read the same arrays.
    Treat the returned arrays as read-only."""
    return _load_cached(json.dumps(spec, sort_keys=True))
