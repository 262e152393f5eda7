"""Decode any image the way a careful user expects: EXIF rotation, grayscale, alpha, 16-bit, palettes."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from distillkit.sources.images import read_bytes


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


def _to_rgb(img: Image.Image) -> np.ndarray:
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
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def decode_rgb(data: bytes, uri: str = "<bytes>") -> np.ndarray:
    """Decode bytes to an HxWx3 uint8 array in display orientation; raises BadImage with the reason."""
    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
        img = ImageOps.exif_transpose(img)
        rgb = _to_rgb(img)
    except UnidentifiedImageError:
        raise BadImage("not an image (format not recognised)") from None
    except Image.DecompressionBombError as e:
        raise BadImage(f"image too large: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadImage(f"corrupt or truncated image: {e}") from None
    if rgb.ndim != 3 or rgb.shape[2] != 3 or min(rgb.shape[:2]) < 1:
        raise BadImage(f"unexpected decoded shape {rgb.shape}")
    return rgb


def load_rgb(uri: str, storage_options: dict[str, Any] | None = None) -> np.ndarray:
    try:
        data = read_bytes(uri, storage_options)
    except FileNotFoundError:
        raise BadImage("unreadable: file not found") from None
    except Exception as e:  # network/permission errors of any fsspec backend
        raise BadImage(f"unreadable: {type(e).__name__}: {e}") from None
    return decode_rgb(data, uri)
