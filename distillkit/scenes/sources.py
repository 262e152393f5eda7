"""Scene sources: 12-Scenes and 7-Scenes raw layouts, and plain image folders (no ground truth).

A source root is either one scene or a tree of scenes (found up to three levels down; ``apt1/kitchen``
becomes the scene name ``apt1_kitchen``). Every reader returns a :class:`SceneSource`: the frames in order
(id, colour file, depth file, camera-to-world pose or None, split) and the dataset intrinsics for the image
size they refer to. Frames whose pose is not finite (12-Scenes writes ``INF`` for lost tracking) are
skipped and counted. Paths go through fsspec, so a source may be a local folder or a URL.

Conventions (``shared/notes/distill.md`` §3.5-3.6): poses are 4x4 camera-to-world (OpenCV axes), depth is
uint16 millimetres (0 = invalid; 7-Scenes also 65535), intrinsics follow the pixel-centre-at-integer
convention. 12-Scenes: ``info.txt`` holds the colour and depth intrinsics, ``split.txt`` line 1 is the
test sequence (frames ``start..end``), the rest is training. 7-Scenes ships no intrinsics: RGB focal 525,
principal point (320, 240) at 640x480 (DSAC*/ACE); the depth camera (focal 585) is not registered to RGB,
so its depth resampled onto RGB pixels is an approximation (recorded in the scene notes).
"""

from __future__ import annotations

import logging
import posixpath
import re
from dataclasses import dataclass, field, replace
from typing import Any

import fsspec
import numpy as np

log = logging.getLogger("distillkit")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
LAYOUTS = ("12scenes", "7scenes", "folder")
SPLITS = {"train": 0, "test": 1}
# 7-Scenes has no calibration files: the values every relocalisation paper uses, at 640x480
SEVEN_SCENES_HW = (480, 640)
SEVEN_SCENES_RGB = (525.0, 525.0, 320.0, 240.0)
SEVEN_SCENES_DEPTH = (585.0, 585.0, 320.0, 240.0)


@dataclass(frozen=True)
class Frame:
    frame_id: str  # unique in the scene, e.g. "frame-000012" or "seq-01/frame-000000"
    color: str  # filesystem path (of the scene's fsspec filesystem)
    depth: str | None = None
    cam2world: np.ndarray | None = field(default=None, compare=False)  # [4, 4] float64; None = no ground truth
    split: int = 0  # 0 = train, 1 = test


@dataclass
class SceneSource:
    name: str
    layout: str
    root: str
    frames: list[Frame]
    fs: Any = field(repr=False, default=None)
    color_K: np.ndarray | None = None  # [3, 3] for images of size color_hw
    color_hw: tuple[int, int] | None = None
    depth_K: np.ndarray | None = None  # [3, 3] for depth maps of size depth_hw (identity extrinsics to colour)
    depth_hw: tuple[int, int] | None = None
    depth_scale: float = 1e-3  # metres per stored unit
    depth_invalid: tuple[int, ...] = (0,)
    n_invalid: int = 0  # frames skipped because their pose is not finite
    notes: str = ""

    @property
    def has_gt(self) -> bool:
        return bool(self.frames) and all(f.cam2world is not None for f in self.frames)

    @property
    def has_gt_depth(self) -> bool:
        return bool(self.frames) and self.depth_K is not None and all(f.depth for f in self.frames)

    def uri(self, path: str) -> str:
        return self.fs.unstrip_protocol(path) if _is_remote(self.fs) else path


def _is_remote(fs) -> bool:
    return "file" not in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def intrinsics(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def parse_pose(text: str) -> np.ndarray | None:
    """4x4 camera-to-world from 4 text rows; None when it is not a usable pose (see `pose_problem`)."""
    pose, _ = read_pose(text)
    return pose


def read_pose(text: str) -> tuple[np.ndarray | None, str | None]:
    """(pose, None), or (None, why not). ``INF`` entries are 12-Scenes' mark of lost tracking: (None, "lost")."""
    try:
        vals = [float(t) for t in text.split()]
    except ValueError:
        return None, "not 16 numbers"
    if len(vals) < 16:
        return None, f"{len(vals)} numbers, not 16"
    M = np.array(vals[:16], np.float64).reshape(4, 4)
    if np.isinf(M).any() and not np.isnan(M).any():
        return None, "lost"
    if not np.isfinite(M).all():
        return None, "NaN entries"
    R = M[:3, :3]
    if not np.allclose(M[3], [0, 0, 0, 1], atol=1e-6) or not np.allclose(R @ R.T, np.eye(3), atol=1e-3) \
            or np.linalg.det(R) < 0:
        return None, "not a rigid camera-to-world matrix (rotation not orthonormal or last row not 0 0 0 1)"
    return M, None


def parse_info(text: str) -> dict[str, str]:
    """BundleFusion-style ``key = value`` lines."""
    out = {}
    for line in text.splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def _matrix_K(value: str) -> np.ndarray:
    m = [float(t) for t in value.split()]  # 4x4 row-major: fx [0], cx [2], fy [5], cy [6]
    return intrinsics(m[0], m[5], m[2], m[6])


def parse_split(text: str) -> list[tuple[int, int]]:
    """``sequenceK [frames=N] [start=a ; end=b]`` lines -> [(a, b), ...] (inclusive frame ranges)."""
    out = []
    for line in text.splitlines():
        m_frames = re.search(r"frames\s*=\s*(\d+)", line)
        m_start = re.search(r"start\s*=\s*(\d+)", line)
        m_end = re.search(r"end\s*=\s*(\d+)", line)
        if m_start and m_end:
            out.append((int(m_start.group(1)), int(m_end.group(1))))
        elif m_frames:
            start = out[-1][1] + 1 if out else 0
            out.append((start, start + int(m_frames.group(1)) - 1))
    return out


def _read_text(fs, path: str) -> str:
    with fs.open(path, "r") as f:
        return f.read()


def _frame_number(name: str) -> int:
    m = re.match(r"frame-(\d+)", name)
    return int(m.group(1)) if m else -1


def _base(path: str) -> str:
    return posixpath.basename(path.rstrip("/"))


def _poses_and_frames(fs, candidates: list[tuple[str, str, str | None, str, int]]) -> tuple[list[Frame], int]:
    """Frames with finite poses; (frame_id, colour, depth, pose file, split) in; count of skipped frames out."""
    frames, bad = [], 0
    for fid, color, depth, pose_path, split in candidates:
        try:
            pose, why = read_pose(fs.cat_file(pose_path).decode(errors="replace"))
        except FileNotFoundError:
            pose, why = None, "lost"
        if pose is None:
            bad += 1
            if why != "lost":  # lost tracking is the dataset's own convention; anything else is worth a word
                log.warning("skipping frame %s: its pose %s has %s", fid, pose_path, why)
            continue
        frames.append(Frame(fid, color, depth, pose, split))
    return frames, bad


# ---------------------------------------------------------------------------------------------- 12-Scenes
def _info_reader(info: dict[str, str], path: str):
    """`get(key, parse)`: the value of one info.txt line, parsed; a missing or malformed line names file and key."""
    def get(key: str, parse, default: str | None = None):
        if key not in info and default is None:
            raise ValueError(f"{path}: no '{key} = …' line (an incomplete info.txt?)")
        try:
            return parse(info.get(key, default))
        except (ValueError, IndexError):
            raise ValueError(f"{path}: '{key} = {info.get(key, default)}' is not a valid value") from None
    return get


def read_12scenes(fs, root: str, name: str | None = None) -> SceneSource:
    info_path = posixpath.join(root, "info.txt")
    get = _info_reader(parse_info(_read_text(fs, info_path)), info_path)
    color_hw = (get("m_colorHeight", int), get("m_colorWidth", int))
    depth_hw = (get("m_depthHeight", int), get("m_depthWidth", int))
    shift = get("m_depthShift", float, "1000")
    split_path = posixpath.join(root, "split.txt")
    test_range = None
    if fs.exists(split_path):
        ranges = parse_split(_read_text(fs, split_path))
        test_range = ranges[0] if ranges else None
    else:
        log.warning("12-Scenes scene %s has no split.txt: every frame is a training frame", root)
    data = posixpath.join(root, "data")
    files = set(_base(p) for p in fs.ls(data, detail=False))
    cands = []
    for fname in sorted(f for f in files if f.endswith(".color.jpg") or f.endswith(".color.png")):
        stem = fname.split(".color.")[0]
        num = _frame_number(stem)
        split = int(test_range is not None and test_range[0] <= num <= test_range[1])
        depth = f"{stem}.depth.png"
        cands.append((stem, posixpath.join(data, fname), posixpath.join(data, depth) if depth in files else None,
                      posixpath.join(data, f"{stem}.pose.txt"), split))
    missing = [c for c in cands if _base(c[3]) not in files]
    if missing:
        log.warning("12-Scenes scene %s: %d frame(s) without a pose file skipped (e.g. %s)", root, len(missing),
                    missing[0][0])
    frames, bad = _poses_and_frames(fs, [c for c in cands if _base(c[3]) in files])
    bad += len(missing)
    return SceneSource(name or _base(root), "12scenes", root, frames, fs,
                       get("m_calibrationColorIntrinsic", _matrix_K), color_hw,
                       get("m_calibrationDepthIntrinsic", _matrix_K), depth_hw, 1.0 / shift, (0,), bad,
                       notes="12-Scenes: depth registered to colour (info.txt intrinsics)")


# ---------------------------------------------------------------------------------------------- 7-Scenes
def _sequences(fs, path: str) -> list[str]:
    if not fs.exists(path):
        return []
    out = []
    for line in _read_text(fs, path).split():
        m = re.match(r"sequence(\d+)", line.strip())
        if m:
            out.append(f"seq-{int(m.group(1)):02d}")
    return out


def read_7scenes(fs, root: str, name: str | None = None) -> SceneSource:
    seqs = [(s, 0) for s in _sequences(fs, posixpath.join(root, "TrainSplit.txt"))]
    seqs += [(s, 1) for s in _sequences(fs, posixpath.join(root, "TestSplit.txt"))]
    cands = []
    for seq, split in seqs:
        folder = posixpath.join(root, seq)
        if not fs.exists(folder):
            raise ValueError(f"7-Scenes scene {root}: split files name {seq}, which does not exist")
        files = set(_base(p) for p in fs.ls(folder, detail=False))
        for fname in sorted(f for f in files if f.endswith(".color.png")):
            stem = fname[: -len(".color.png")]
            depth = f"{stem}.depth.png"
            cands.append((f"{seq}/{stem}", posixpath.join(folder, fname),
                          posixpath.join(folder, depth) if depth in files else None,
                          posixpath.join(folder, f"{stem}.pose.txt"), split))
    frames, bad = _poses_and_frames(fs, cands)
    return SceneSource(name or _base(root), "7scenes", root, frames, fs, intrinsics(*SEVEN_SCENES_RGB),
                       SEVEN_SCENES_HW, intrinsics(*SEVEN_SCENES_DEPTH), SEVEN_SCENES_HW, 1e-3, (0, 65535), bad,
                       notes="7-Scenes: intrinsics not shipped (RGB f=525, depth f=585, pp 320,240); depth is not "
                             "registered to RGB, so the GT depth resampled onto RGB pixels is approximate")


# ---------------------------------------------------------------------------------------------- plain folder
def read_folder(fs, root: str, name: str | None = None) -> SceneSource:
    files = sorted(p for p in fs.ls(root, detail=False) if p.lower().endswith(IMAGE_EXTENSIONS))
    frames = [Frame(_base(p), p) for p in files]
    return SceneSource(name or _base(root), "folder", root, frames, fs, notes="plain image folder: no ground truth")


READERS = {"12scenes": read_12scenes, "7scenes": read_7scenes, "folder": read_folder}


def detect_layout(fs, path: str) -> str | None:
    """'12scenes' | '7scenes' | 'folder' | None (not a scene)."""
    if fs.exists(posixpath.join(path, "info.txt")) and fs.isdir(posixpath.join(path, "data")):
        return "12scenes"
    if fs.exists(posixpath.join(path, "TrainSplit.txt")) or fs.exists(posixpath.join(path, "TestSplit.txt")):
        return "7scenes"
    if any(p.lower().endswith(IMAGE_EXTENSIONS) and not fs.isdir(p) for p in fs.ls(path, detail=False)):
        return "folder"
    return None


def scene_name(rel: str) -> str:
    """A flat store group name for a scene path relative to the source root."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", rel.strip("/").replace("/", "_"))
    return name or "scene"


def discover(source: str, layout: str = "auto", storage_options: dict | None = None,
             max_depth: int = 3) -> list[SceneSource]:
    """All scenes under ``source`` (or ``source`` itself), sorted by name."""
    fs, root = fsspec.core.url_to_fs(source, **(storage_options or {}))
    root = root.rstrip("/") or "/"
    if not fs.isdir(root):
        raise ValueError(f"scene source {source} is not a folder")

    def kind(path):
        found = detect_layout(fs, path)
        return found if layout in ("auto", found) else None

    here = kind(root)
    if here:
        return [READERS[here](fs, root, scene_name(_base(root)))]
    found: list[tuple[str, str]] = []

    def walk(path: str, depth: int) -> None:
        for child in sorted(p for p in fs.ls(path, detail=False) if fs.isdir(p)):
            k = kind(child)
            if k:
                found.append((child, k))
            elif depth < max_depth:
                walk(child, depth + 1)

    walk(root, 1)
    if not found:
        want = "any supported layout" if layout == "auto" else f"the {layout} layout"
        raise ValueError(f"no scene of {want} found under {source} (12-Scenes: info.txt + data/; 7-Scenes: "
                         "TrainSplit.txt/TestSplit.txt + seq-XX/; or a folder of images)")
    scenes = [READERS[k](fs, p, scene_name(posixpath.relpath(p, root))) for p, k in found]
    names = [s.name for s in scenes]
    if len(set(names)) != len(names):
        raise ValueError(f"scene names collide after flattening: {names}")
    return sorted(scenes, key=lambda s: s.name)


def select_frames(scene: SceneSource, splits: tuple[str, ...] | list[str] = ("train", "test"), stride: int = 1,
                  max_frames: int | None = None) -> SceneSource:
    """Keep frames of ``splits``, every ``stride``-th, then at most ``max_frames`` evenly spread (in order)."""
    keep = {SPLITS[s] for s in splits}
    frames = [f for f in scene.frames if f.split in keep][::max(1, stride)]
    if max_frames is not None and len(frames) > max_frames:
        idx = np.unique(np.round(np.linspace(0, len(frames) - 1, max_frames)).astype(int))
        frames = [frames[i] for i in idx]
    return replace(scene, frames=frames)


def fingerprint_parts(scene: SceneSource) -> list[str]:
    """What identifies a planned scene (for the store's source fingerprint)."""
    parts = [scene.name, scene.layout]
    for f in scene.frames:
        pose = "-" if f.cam2world is None else ",".join(f"{x:.6g}" for x in f.cam2world.ravel())
        parts.append(f"{f.frame_id}|{f.split}|{pose}")
    return parts


__all__ = ["Frame", "LAYOUTS", "SceneSource", "detect_layout", "discover", "fingerprint_parts", "intrinsics",
           "parse_info", "parse_pose", "parse_split", "read_12scenes", "read_7scenes", "read_folder",
           "scene_name", "select_frames"]
