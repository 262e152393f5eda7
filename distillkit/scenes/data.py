"""`SceneData`: one scene's frames with pixel-aligned world-frame pointmaps, for scene-specific pointmap students.

A small, in-memory (numpy-backed) interface: the trainer (`distillkit.training.pointmap.trainer`) and the pose evaluation
(`distillkit.training.pointmap.metrics`) take nothing else. Three ways to get one:

* `SceneData.from_arrays(...)`: any arrays (validated, defaults filled in);
* `SceneData.from_store(url, scene)`: an aligned scene of a DUSt3R scene store (`distillkit cache-scenes`);
* `distillkit.scenes.synthetic.synthetic_scene(...)`: a ray-cast box room with *exact* world pointmaps, K and camera
  poses (tests, benchmarks).

Conventions: images uint8 [n, H, W, 3]; pts3d float32 [n, H, W, 3] in the world frame (metres where the scene is
metric); conf float32 [n, H, W] (DUSt3R confidences are >= 1; 1 = no information); mask bool [n, H, W] (valid
targets); K [n, 3, 3] pinhole intrinsics of the *stored* resolution with OpenCV pixel centres (pixel (u, v) has its
centre at integer coordinates); split int8 [n] (0 = train/mapping, 1 = held-out test); poses are camera-to-world
[n, 4, 4] with OpenCV camera axes (x right, y down, z forward).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distillkit.store.metadata import raise_if_damaged

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
        """One aligned scene of a DUSt3R scene store (``storage_schemas/scenes.py``; local path or fsspec URL).

        Reads ``scenes/<scene>/{image, pts3d, conf, mask, intrinsics, cam2world, split, gt_cam2world?}``: the
        globally aligned world pointmaps with their confidences and validity mask, the intrinsics at the stored
        resolution, the aligned (teacher) poses, the dataset's split (0 train / 1 test; when it holds no test frame,
        e.g. an image folder, every `test_every`-th frame is held out) and, where the dataset has them, its
        ground-truth poses (used for pose evaluation). The scene must be aligned (``progress/scene_done``).
        """
        from distillkit.scenes.store import read_intact, require_aligned

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
            return read_intact(sg[key]) if key in present else None  # never train on damaged bytes

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


def _open_scene_store(url: str, storage_options: dict[str, Any] | None):
    """(group, manifest) of a scene store; a clear error for anything else."""
    from distillkit.scenes.store import open_store
    from distillkit_schemas.scenes import read_scene_manifest

    try:
        group = open_store(url, "r", storage_options)
        return group, read_scene_manifest(group)
    except (FileNotFoundError, KeyError, ValueError) as e:
        raise_if_damaged(url, storage_options, e)
        raise ValueError(f"{url}: not a readable DUSt3R scene store ({e})") from None


def aligned_scenes(url: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Names of the aligned scenes of a scene store, in store order."""
    from distillkit.scenes.store import done_flags

    group, manifest = _open_scene_store(url, storage_options)
    return [s for s, d in zip(manifest.scenes, done_flags(group)[1]) if d]
