"""One frame as the network sees it: DUSt3R's resize + centre crop, and the ground truth moved onto those pixels.

The pixels come from ``teachers.croco.preprocess.resize_and_crop`` (bit-exact with the official loader);
:func:`crop_geometry` recomputes the same resize factors and crop box, so the dataset intrinsics can be
carried over exactly. Pixel centres sit at integer coordinates (OpenCV / DUSt3R convention): a resize by
``s`` maps ``c -> s (c + 0.5) - 0.5`` and a crop at ``x0`` maps ``c -> c - x0``. GT depth (metres) is resampled
onto the cropped colour pixels by nearest neighbour through both intrinsics (identity colour-depth
extrinsics), never interpolated across depth edges; 0 = invalid.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from distillkit.teachers.croco.preprocess import resize_and_crop
from distillkit.scenes.sources import Frame, SceneSource


@dataclass(frozen=True)
class CropGeometry:
    src_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in resized pixels (what Pillow's crop uses)

    @property
    def out_hw(self) -> tuple[int, int]:
        x0, y0, x1, y1 = self.box
        return (y1 - y0, x1 - x0)


def crop_geometry(src_hw: tuple[int, int], size: int, square_ok: bool = False, patch_size: int = 16) -> CropGeometry:
    """The resize and crop box of ``resize_and_crop`` for an image of ``src_hw`` (see preprocess.py)."""
    h0, w0 = src_hw
    long_side = round(size * max(w0 / h0, h0 / w0)) if size == 224 else size
    s = max(w0, h0)
    w, h = int(round(w0 * long_side / s)), int(round(h0 * long_side / s))
    cx, cy = w // 2, h // 2
    if size == 224:
        half = min(cx, cy)
        box = (cx - half, cy - half, cx + half, cy + half)
    else:
        halfw = ((2 * cx) // patch_size) * patch_size / 2
        halfh = ((2 * cy) // patch_size) * patch_size / 2
        if not square_ok and w == h:
            halfh = 3 * halfw / 4
        box = (cx - halfw, cy - halfh, cx + halfw, cy + halfh)
    return CropGeometry((h0, w0), (h, w), tuple(int(round(b)) for b in box))  # Pillow rounds the box this way


def rescale_K(K: np.ndarray, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> np.ndarray:
    """Intrinsics of the same camera at another image size (pixel centres at integer coordinates)."""
    sy, sx = to_hw[0] / from_hw[0], to_hw[1] / from_hw[1]
    out = np.array(K, np.float64, copy=True)
    out[0, 0] *= sx
    out[1, 1] *= sy
    out[0, 2] = sx * (K[0, 2] + 0.5) - 0.5
    out[1, 2] = sy * (K[1, 2] + 0.5) - 0.5
    return out


def crop_K(K: np.ndarray, geom: CropGeometry) -> np.ndarray:
    """Intrinsics after ``resize_and_crop`` of an image of ``geom.src_hw`` with intrinsics ``K``."""
    out = rescale_K(K, geom.src_hw, geom.resized_hw)
    out[0, 2] -= geom.box[0]
    out[1, 2] -= geom.box[1]
    return out


def resample_depth(depth: np.ndarray, K_depth: np.ndarray, K_img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Depth [H, W] on the image pixels: each pixel's ray projected into the depth map, nearest sample."""
    H, W = hw
    v, u = np.mgrid[:H, :W].astype(np.float64)
    xn = (u - K_img[0, 2]) / K_img[0, 0]
    yn = (v - K_img[1, 2]) / K_img[1, 1]
    ud = np.rint(K_depth[0, 0] * xn + K_depth[0, 2]).astype(np.int64)
    vd = np.rint(K_depth[1, 1] * yn + K_depth[1, 2]).astype(np.int64)
    inside = (ud >= 0) & (ud < depth.shape[1]) & (vd >= 0) & (vd < depth.shape[0])
    out = np.zeros((H, W), np.float32)
    out[inside] = depth[vd[inside], ud[inside]]
    return out


def _open(scene: SceneSource, path: str) -> Image.Image:
    """A frame's image, decoded completely; a file that does not decode is named (a truncated JPEG, not an image)."""
    try:
        with Image.open(io.BytesIO(scene.fs.cat_file(path))) as img:
            img.load()
            return ImageOps.exif_transpose(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"scene {scene.name}: {scene.uri(path)} does not decode ({e}); fix or remove the frame")


def image_hw(scene: SceneSource, frame: Frame) -> tuple[int, int]:
    """Source size of a frame's colour image (reads only the header)."""
    with scene.fs.open(frame.color, "rb") as f, Image.open(f) as img:
        w, h = img.size
        orientation = img.getexif().get(0x0112, 1)
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)  # EXIF rotations by 90 degrees swap the sides


def read_depth_m(scene: SceneSource, frame: Frame) -> np.ndarray:
    """The frame's depth map in metres (float32), invalid values -> 0."""
    raw = np.asarray(_open(scene, frame.depth))
    if raw.ndim != 2:
        raise ValueError(f"scene {scene.name}: depth map {scene.uri(frame.depth)} has {raw.shape[2]} channels; "
                         "expected one (uint16)")
    if scene.depth_hw is not None and not _same_aspect(raw.shape, scene.depth_hw):
        raise ValueError(f"scene {scene.name}: depth map {scene.uri(frame.depth)} is {raw.shape[0]}x{raw.shape[1]}, "
                         f"the dataset's depth maps are {scene.depth_hw[0]}x{scene.depth_hw[1]}: not the same "
                         "camera; fix or remove the frame")
    depth = raw.astype(np.float32) * np.float32(scene.depth_scale)
    depth[np.isin(raw, scene.depth_invalid)] = 0.0
    return depth


def frame_problem(scene: SceneSource, frame: Frame) -> str | None:
    """Why a frame cannot be used (its colour image does not decode, its depth map is of another camera), or None.
    Checked when a scene is planned, so that a bad frame is reported and skipped before anything is written."""
    try:
        _open(scene, frame.color)
        if frame.depth and scene.depth_K is not None:
            read_depth_m(scene, frame)
    except (ValueError, FileNotFoundError) as e:
        return str(e)
    return None


def _same_aspect(hw: tuple[int, ...], want: tuple[int, int], tol: float = 0.02) -> bool:
    """A depth map of another resolution is rescaled; one of another shape is another camera (or garbage)."""
    return abs(hw[0] * want[1] - hw[1] * want[0]) <= tol * want[0] * hw[1]


@dataclass
class LoadedFrame:
    image: np.ndarray  # [H, W, 3] uint8, the network input
    K: np.ndarray | None  # [3, 3] ground-truth intrinsics of `image`
    depth: np.ndarray | None  # [H, W] metres, 0 = invalid


def gt_intrinsics(scene: SceneSource, src_hw: tuple[int, int], size: int, patch_size: int = 16
                  ) -> np.ndarray | None:
    if scene.color_K is None:
        return None
    K = rescale_K(scene.color_K, scene.color_hw, src_hw) if scene.color_hw != src_hw else scene.color_K
    return crop_K(K, crop_geometry(src_hw, size, patch_size=patch_size))


def load_frame(scene: SceneSource, frame: Frame, size: int, patch_size: int = 16, with_depth: bool = True
               ) -> LoadedFrame:
    img = _open(scene, frame.color).convert("RGB")
    src_hw = (img.size[1], img.size[0])
    out = resize_and_crop(img, size, patch_size=patch_size)
    pixels = np.asarray(out, np.uint8)
    geom = crop_geometry(src_hw, size, patch_size=patch_size)
    if pixels.shape[:2] != geom.out_hw:  # the geometry must describe exactly what the loader did
        raise AssertionError(f"crop geometry {geom} disagrees with the loader output {pixels.shape[:2]}")
    K = gt_intrinsics(scene, src_hw, size, patch_size)
    depth = None
    if with_depth and K is not None and scene.depth_K is not None and frame.depth:
        dm = read_depth_m(scene, frame)
        Kd = scene.depth_K if scene.depth_hw in (None, dm.shape) else rescale_K(scene.depth_K, scene.depth_hw,
                                                                                 dm.shape)
        depth = resample_depth(dm, Kd, K, pixels.shape[:2])
    return LoadedFrame(pixels, K, depth)


def to_network(images: np.ndarray):
    """uint8 [n, H, W, 3] -> float32 tensor [n, 3, H, W] in [-1, 1], exactly as ``preprocess.to_tensor``."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255)
    return (x - 0.5) / 0.5
