"""View planning: which part of a source image the student and the teachers see.

A view is a crop box in source pixel coordinates plus a flip flag. It is stored per sample (samples/view), so the
exact input of every cached target can be replayed from the source image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class View:
    x0: float
    y0: float
    x1: float
    y1: float
    flip: bool = False

    def as_array(self) -> np.ndarray:
        return np.array([self.x0, self.y0, self.x1, self.y1, float(self.flip)], dtype=np.float32)


def center_view(source_hw: tuple[int, int], target_hw: tuple[int, int]) -> View:
    """The largest centred crop with the target's aspect ratio (resize shorter side, centre crop)."""
    sh, sw = source_hw
    th, tw = target_hw
    scale = max(th / sh, tw / sw)
    ch, cw = th / scale, tw / scale
    y0, x0 = max((sh - ch) / 2.0, 0.0), max((sw - cw) / 2.0, 0.0)
    return View(x0=x0, y0=y0, x1=min(x0 + cw, float(sw)), y1=min(y0 + ch, float(sh)))


def render(image: np.ndarray | Image.Image, view: View, out_hw: tuple[int, int],
           scale: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """Crop `view` out of an HxWx3 uint8 image (or an RGB PIL image) and resize it to out_hw (bicubic,
    antialiased). `scale` (y, x): the image's size over the size the view's coordinates refer to (a JPEG decoded
    smaller in draft mode)."""
    pil = image if isinstance(image, Image.Image) else Image.fromarray(image)
    sy, sx = scale
    out = pil.resize((out_hw[1], out_hw[0]), resample=Image.Resampling.BICUBIC,
                     box=(view.x0 * sx, view.y0 * sy, view.x1 * sx, view.y1 * sy))
    if view.flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(out, dtype=np.uint8)


def draft_factor(view: View, out_hws: set[tuple[int, int]]) -> int:
    """How many times smaller (1, 2, 4 or 8) a JPEG may be decoded and still give every output at least its own
    resolution inside the view's box."""
    room = min(min((view.y1 - view.y0) / h, (view.x1 - view.x0) / w) for h, w in out_hws)
    factor = 1
    while factor < 8 and room >= 2 * factor:
        factor *= 2
    return factor


def view_seed(base_seed: int, sample_id: str, k: int) -> int:
    """A stable 63-bit seed per (run seed, image id, view index)."""
    import hashlib

    digest = hashlib.sha256(f"{base_seed}|{sample_id}|{k}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def random_view(source_hw: tuple[int, int], target_hw: tuple[int, int], seed: int,
                scale: tuple[float, float] = (0.4, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                flip_p: float = 0.5) -> View:
    """RandomResizedCrop as DUNE uses it (scale 0.4-1 of the area, aspect jitter around the target's) + h-flip,
    fully determined by `seed`."""
    rng = np.random.default_rng(seed)
    sh, sw = source_hw
    target_ratio = target_hw[1] / target_hw[0]
    area = sh * sw
    flip = bool(rng.random() < flip_p)
    for _ in range(10):
        a = area * rng.uniform(*scale)
        r = target_ratio * np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        w, h = np.sqrt(a * r), np.sqrt(a / r)
        if w <= sw and h <= sh:
            x0, y0 = rng.uniform(0, sw - w), rng.uniform(0, sh - h)
            return View(float(x0), float(y0), float(x0 + w), float(y0 + h), flip)
    c = center_view(source_hw, target_hw)
    return View(c.x0, c.y0, c.x1, c.y1, flip)
