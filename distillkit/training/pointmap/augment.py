"""Exact augmentation for pixel-aligned targets (`sample_view` / `apply_view`).

One random crop (fixed aspect), resize to the training size and optional horizontal flip are applied identically to
the image, pointmap, confidence and mask. The image is resampled bilinearly (antialiased when shrinking); targets,
confidence and mask by **nearest** sampling, so no point is invented between two surfaces: output pixel j takes the
source pixel nearest to its continuous source location (j + 0.5) / s - 0.5 (s = output/crop size). The intrinsics
are transformed exactly for that continuous mapping (`view_K`), so the target at output pixel j projects within
0.5 * s px of j (exactly onto j when the crop is not rescaled: s = 1). World targets are unchanged by any of this
(they are world points, not camera-frame points); a flip only changes K, which then has a negative fx (a mirror
image is not a proper pinhole view; `metrics` mirrors it back for PnP).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class View:
    """Crop box in source pixels, output size, flip."""

    top: int
    left: int
    height: int
    width: int
    out_h: int
    out_w: int
    flip: bool = False


def full_view(hw: tuple[int, int], out_hw: tuple[int, int] | None = None) -> View:
    H, W = hw
    oh, ow = out_hw or hw
    return View(0, 0, H, W, oh, ow, False)


def sample_view(hw: tuple[int, int], out_hw: tuple[int, int], crop_scale=(1.0, 1.0), flip_p: float = 0.0,
                generator: torch.Generator | None = None) -> View:
    """A random crop covering an area fraction in `crop_scale` with the frame's aspect ratio, anywhere in the frame,
    resized to `out_hw`; flipped with probability `flip_p`."""
    H, W = hw
    r = torch.rand(4, generator=generator).tolist()
    a = crop_scale[0] + (crop_scale[1] - crop_scale[0]) * r[0]
    h = min(H, max(1, round(math.sqrt(a) * H)))
    w = min(W, max(1, round(math.sqrt(a) * W)))
    top = min(int(r[1] * (H - h + 1)), H - h)
    left = min(int(r[2] * (W - w + 1)), W - w)
    return View(top, left, h, w, out_hw[0], out_hw[1], bool(r[3] < flip_p))


def view_indices(v: View) -> tuple[torch.Tensor, torch.Tensor]:
    """Source row / column (in the full frame) that output row / column j takes its target from: the pixel nearest
    to the continuous location (j + 0.5) * crop / out - 0.5, after the flip."""
    def nearest(n_out: int, n_in: int, offset: int) -> torch.Tensor:
        j = torch.arange(n_out, dtype=torch.float64)
        return offset + torch.floor((j + 0.5) * n_in / n_out).long().clamp(0, n_in - 1)

    rows = nearest(v.out_h, v.height, v.top)
    cols = nearest(v.out_w, v.width, v.left)
    return rows, cols.flip(0) if v.flip else cols


def view_K(K, v: View) -> np.ndarray:
    """Intrinsics of the view: crop (shift), resize (u' = (u + 0.5) s - 0.5), flip (u' = W' - 1 - u')."""
    sx, sy = v.out_w / v.width, v.out_h / v.height
    A = np.array([[sx, 0, sx * (0.5 - v.left) - 0.5], [0, sy, sy * (0.5 - v.top) - 0.5], [0, 0, 1.0]])
    if v.flip:
        A = np.array([[-1.0, 0, v.out_w - 1], [0, 1, 0], [0, 0, 1]]) @ A
    return A @ np.asarray(K, dtype=np.float64)


def apply_view(image: torch.Tensor, pts: torch.Tensor | None, conf: torch.Tensor | None, mask: torch.Tensor | None,
               v: View) -> dict[str, torch.Tensor]:
    """image uint8 [H, W, 3] -> float [3, h, w] in [0, 1] (float images are resampled as they are), bilinear;
    pts [H, W, 3], conf [H, W], mask [H, W]
    -> nearest-sampled at the same view. Identity when the view is the full frame at its own size."""
    x = image[v.top:v.top + v.height, v.left:v.left + v.width].permute(2, 0, 1).float()
    if image.dtype == torch.uint8:
        x = x / 255.0
    if (v.height, v.width) != (v.out_h, v.out_w):
        shrink = v.out_h < v.height or v.out_w < v.width
        x = F.interpolate(x[None], size=(v.out_h, v.out_w), mode="bilinear", align_corners=False,
                          antialias=shrink)[0]
        if image.dtype == torch.uint8:
            x = x.clamp(0, 1)
    if v.flip:
        x = x.flip(-1)
    out = {"image": x}
    rows, cols = view_indices(v)
    for key, t in (("pts", pts), ("conf", conf), ("mask", mask)):
        if t is not None:
            out[key] = t[rows][:, cols]
    return out
