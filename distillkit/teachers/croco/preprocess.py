"""DUSt3R's ``load_images``: EXIF-aware open, resize, centre crop to multiples of the patch size, [-1, 1] tensor.

Reimplemented with Pillow from the spec (dust3r.md §2.1); reproduces the official outputs bit-exactly.
``size=224``: the short side becomes 224, then a 224x224 centre square. Any other size (512): the long
side becomes ``size``, then the largest centred crop whose sides are multiples of 16; a square result is
cut to 4:3 landscape unless ``square_ok``.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def _extensions() -> tuple[str, ...]:
    try:  # HEIC/HEIF as in the official loader, when the plugin is installed
        from pillow_heif import register_heif_opener

        register_heif_opener()
        return IMAGE_EXTENSIONS + (".heic", ".heif")
    except ImportError:
        return IMAGE_EXTENSIONS


def open_rgb(source: str | os.PathLike | bytes | BinaryIO) -> Image.Image:
    """Open, apply the EXIF orientation, convert to RGB."""
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    with Image.open(source) as img:
        return ImageOps.exif_transpose(img).convert("RGB")


def _resize_long_side(img: Image.Image, long_side: int) -> Image.Image:
    s = max(img.size)
    resample = Image.Resampling.LANCZOS if s > long_side else Image.Resampling.BICUBIC  # shrink vs enlarge
    new_size = tuple(int(round(x * long_side / s)) for x in img.size)  # Python round: half to even
    return img.resize(new_size, resample)


def resize_and_crop(img: Image.Image, size: int, square_ok: bool = False, patch_size: int = 16) -> Image.Image:
    """The official resize + centre crop of one (already oriented, RGB) image."""
    w0, h0 = img.size
    if size == 224:
        img = _resize_long_side(img, round(size * max(w0 / h0, h0 / w0)))
    else:
        img = _resize_long_side(img, size)
    w, h = img.size
    cx, cy = w // 2, h // 2
    if size == 224:
        half = min(cx, cy)
        return img.crop((cx - half, cy - half, cx + half, cy + half))
    halfw = ((2 * cx) // patch_size) * patch_size / 2
    halfh = ((2 * cy) // patch_size) * patch_size / 2
    if not square_ok and w == h:
        halfh = 3 * halfw / 4
    return img.crop((cx - halfw, cy - halfh, cx + halfw, cy + halfh))  # Pillow rounds the box like the original


def to_tensor(img: Image.Image) -> torch.Tensor:
    """(1, 3, H, W) float32 in [-1, 1]: x/255, then (x - 0.5)/0.5, in float32 like torchvision."""
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)
    return ((x - 0.5) / 0.5).unsqueeze(0)


def _list_images(source: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    exts = _extensions()
    if isinstance(source, (str, os.PathLike)):
        root = Path(source)
        if not root.is_dir():
            raise ValueError(f"{root} is not a folder; pass a list of image paths")
        files = sorted(root.iterdir(), key=lambda p: p.name)
    else:
        files = [Path(p) for p in source]
    return [p for p in files if p.name.lower().endswith(exts)]


def load_images(source: str | os.PathLike | Iterable[str | os.PathLike], size: int, square_ok: bool = False,
                patch_size: int = 16) -> list[dict]:
    """Like the official loader: a folder (sorted by name) or a list of paths; other extensions are skipped.

    Each entry: ``img`` (1, 3, H, W) float32, ``true_shape`` int32 [[H, W]], ``idx``, ``instance`` (= str(idx)).
    """
    out = []
    for path in _list_images(source):
        img = resize_and_crop(open_rgb(path), size, square_ok, patch_size)
        idx = len(out)
        out.append(dict(img=to_tensor(img), true_shape=np.int32([img.size[::-1]]), idx=idx, instance=str(idx)))
    if not out:
        raise ValueError(f"no images ({', '.join(_extensions())}) found in {source}")
    return out
