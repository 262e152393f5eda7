"""Decode any image the way a careful user expects: EXIF rotation, grayscale, alpha, 16-bit, palettes, CMYK, the
first frame of an animation or multi-page file; anything unusable raises BadImage with a reason naming the cause."""

from __future__ import annotations

import errno
import io
import os
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from distillkit.sources.images import Unreachable, read_bytes


class BadImage(Exception):
    """An input that cannot be used; the message is the reason recorded in the store."""


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        scale = 255.0 if float(np.nanmax(arr, initial=0.0)) <= 1.0 else 1.0
        return np.clip(np.nan_to_num(arr) * scale, 0, 255).round().astype(np.uint8)
    # 16-bit (and 32-bit integer modes holding 16-bit data): map 0..65535 to 0..255
    return np.clip(arr.astype(np.float64) / 257.0, 0, 255).round().astype(np.uint8)


def _to_rgb_image(img: Image.Image) -> Image.Image | np.ndarray:
    """An RGB PIL image (no copy when it already is one), or an array for 16-bit and float grayscale."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        gray = _to_uint8(np.asarray(img))
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("LA", "PA", "La"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "RGBa"):
        # composite over white: transparent pixels get a defined colour instead of whatever RGB they stored
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    return img if img.mode == "RGB" else img.convert("RGB")


# EXIF orientation -> the transpose that shows the image upright (as ImageOps.exif_transpose does)
_ORIENT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
           5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}


def _deep_colour(data: bytes, img: Image.Image) -> np.ndarray | None:
    """16-bit colour (RGB/RGBA/LA PNG or TIFF): Pillow keeps only the high byte; OpenCV reads all 16 bits, so the
    8-bit value is round(v / 257) as for 16-bit grayscale. None when OpenCV cannot read it (Pillow's result stands)."""
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.dtype != np.uint16 or arr.ndim != 3 or arr.shape[2] not in (3, 4):
        return None
    x = arr[..., [2, 1, 0]].astype(np.float64)
    if arr.shape[2] == 4:  # composite over white, as for 8-bit alpha
        a = arr[..., 3:].astype(np.float64) / 65535.0
        x = x * a + 65535.0 * (1.0 - a)
    rgb = np.clip(x / 257.0, 0, 255).round().astype(np.uint8)
    method = _ORIENT.get(img.getexif().get(0x0112, 1))
    return np.asarray(Image.fromarray(rgb).transpose(method)) if method is not None else rgb


def decode_rgb(data: bytes, uri: str = "<bytes>") -> np.ndarray:
    """Decode bytes to an HxWx3 uint8 array in display orientation; raises BadImage with the reason."""
    image, _ = decode_image(data, uri)
    return image if isinstance(image, np.ndarray) else np.asarray(image, dtype=np.uint8)


def decode_image(data: bytes, uri: str = "<bytes>",
                 reduce: Callable[[tuple[int, int]], int] | None = None) -> tuple[Image.Image | np.ndarray,
                                                                                 tuple[int, int]]:
    """(the image, upright, as an RGB PIL image or an HxWx3 uint8 array; its full (h, w) in display orientation).

    `reduce(full_hw)` may allow a JPEG to be decoded 2, 4 or 8 times smaller (libjpeg's DCT scaling, Pillow's
    draft mode: several times faster than decoding everything and resizing it away). The caller then scales its
    coordinates by the decoded size over the full size."""
    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)  # animated GIF/WebP/PNG, multi-page TIFF: the first frame
        deep = img.mode not in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F") and any(
            ";16" in str(t.args) for t in img.tile or ())  # before anything loads the image (getexif may)
        orientation = img.getexif().get(0x0112, 1)
        w, h = img.size
        full = (w, h) if orientation in (5, 6, 7, 8) else (h, w)
        factor = reduce(full) if reduce is not None and img.format == "JPEG" else 1
        if factor > 1:
            img.draft("RGB", (-(-w // factor), -(-h // factor)))
        img.load()
        rgb = _deep_colour(data, img) if deep else None
        if rgb is None:
            rgb = _to_rgb_image(img if _ORIENT.get(orientation) is None else ImageOps.exif_transpose(img))
    except UnidentifiedImageError:
        raise BadImage("not an image (format not recognised)") from None
    except Image.DecompressionBombError as e:
        raise BadImage(f"image too large (decompression-bomb guard): {e}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise BadImage(f"corrupt or truncated image: {e}") from None
    shape = rgb.shape if isinstance(rgb, np.ndarray) else (rgb.height, rgb.width, len(rgb.getbands()))
    if len(shape) != 3 or shape[2] != 3 or min(shape[:2]) < 1:
        raise BadImage(f"unexpected decoded shape {shape}")
    return rgb, full


def _unreadable(uri: str, e: BaseException) -> str:
    """The reason a file could not be read, in words."""
    if isinstance(e, IsADirectoryError):
        return "is a directory, not an image file"
    if isinstance(e, FileNotFoundError):
        local = "://" not in uri or uri.startswith("file://")
        return "unreadable: file not found" + (" (dangling symlink)" if local and os.path.islink(uri) else "")
    if isinstance(e, OSError) and e.errno == errno.ELOOP:
        return "unreadable: symlink loop (too many levels of symbolic links)"
    if isinstance(e, PermissionError):
        return "unreadable: permission denied"
    if isinstance(e, Unreachable):
        return str(e)
    return f"unreadable: {type(e).__name__}: {e}"


def load_rgb(uri: str, storage_options: dict[str, Any] | None = None) -> np.ndarray:
    return decode_rgb(read_source(uri, storage_options), uri)


def read_source(uri: str, storage_options: dict[str, Any] | None = None) -> bytes:
    """The bytes of a source file; a local path is read directly (fsspec's per-file overhead is a large part of
    decoding a small JPEG). Raises BadImage naming why it cannot be read."""
    try:
        if "://" not in uri and not storage_options:
            with open(uri, "rb") as f:
                return f.read()
        return read_bytes(uri, storage_options)
    except Exception as e:  # missing, directory, loop, network errors of any fsspec backend
        raise BadImage(_unreadable(uri, e)) from None
