"""Real photographs shipped with scikit-image, written as a small image folder: the demo, the tests and the
``skimage:`` source (`distillkit cache --source skimage:`) use them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

# Bundled with scikit-image (no download). Grayscale, RGBA and odd sizes on purpose: the pipeline must cope.
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "hubble_deep_field",
          "immunohistochemistry", "retina", "moon", "brick", "grass", "gravel", "clock", "cell", "page", "text",
          "colorwheel", "logo")
DEMO_SOURCE = "skimage:"  # the source naming these photographs, written once to a cache folder


def load_photos(names: tuple[str, ...] = PHOTOS) -> dict[str, np.ndarray]:
    import skimage.data

    out = {}
    for name in names:
        try:
            out[name] = np.asarray(getattr(skimage.data, name)())
        except Exception:  # a scikit-image build without that file: use the others
            continue
    if not out:
        raise RuntimeError("scikit-image ships none of the demo photographs; is scikit-image installed?")
    return out


def write_demo_images(folder: str | Path, crops_per_photo: int = 3, seed: int = 0) -> list[Path]:
    """Each photo as-is plus a few random crops (portrait, landscape, square), as JPEG/PNG files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for name, arr in load_photos().items():
        ext = "png" if arr.ndim == 3 and arr.shape[2] == 4 else "jpg"
        variants = [arr]
        h, w = arr.shape[:2]
        for _ in range(crops_per_photo):
            ch, cw = int(h * rng.uniform(0.5, 0.9)), int(w * rng.uniform(0.5, 0.9))
            y0, x0 = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            variants.append(arr[y0:y0 + ch, x0:x0 + cw])
        for i, v in enumerate(variants):
            path = folder / f"{name}_{i}.{ext}"
            Image.fromarray(v).save(path, quality=92) if ext == "jpg" else Image.fromarray(v).save(path)
            paths.append(path)
    return paths


def demo_photos_folder() -> Path:
    """Materialise the demo photographs (idempotent; a marker file says the folder is complete)."""
    folder = Path(os.environ.get("DISTILLKIT_CACHE", "~/.cache/distillkit")).expanduser() / "skimage-photos"
    marker = folder / ".complete"
    if not marker.exists():
        tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
        write_demo_images(tmp)
        (tmp / ".complete").write_text("")
        try:
            tmp.rename(folder)
        except OSError:  # another process won the race: use its folder
            shutil.rmtree(tmp, ignore_errors=True)
    return folder
