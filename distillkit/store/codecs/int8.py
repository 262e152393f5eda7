"""int8: per-channel affine codes, x = q * scale + offset, q in -127..127; the CLS token with a range of its own.

The range is what the stage's input spans on the calibration sample, widened by a margin; values beyond it are
clipped (`distillkit bench storage` counts them). Per-channel (not per-token) scaling keeps the bytes at exactly
half of fp16, and absorbs the few ViT channels whose range is much larger than the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from distillkit.store.codecs.stage import Array, Stage, as_dtype

MARGIN = 0.05  # the range widened by 5 % on each side: headroom for unseen images
CLS_MARGIN = 0.5  # one CLS token per image: a much smaller calibration sample, so far more headroom


@dataclass
class Int8(Stage):
    scale: Array  # [W]
    offset: Array  # [W]
    cls_scale: Array  # [C]
    cls_offset: Array  # [C]

    @classmethod
    def fit(cls, spec, x: np.ndarray, cls_tokens: np.ndarray) -> "Int8":
        offset, scale = _affine(x, MARGIN)
        cls_offset, cls_scale = _affine(cls_tokens, CLS_MARGIN)
        return cls(spec, scale, offset, cls_scale, cls_offset)

    def encode(self, x: Array) -> Array:
        return _quantize(x, self.offset, self.scale)

    def decode(self, q: Array) -> Array:
        return _dequantize(q, self.scale, self.offset)

    def encode_cls(self, x: Array) -> Array:
        return _quantize(x, self.cls_offset, self.cls_scale)

    def decode_cls(self, q: Array) -> Array:
        return _dequantize(q, self.cls_scale, self.cls_offset)

    def clip_fraction(self, x: np.ndarray) -> float:
        q = (as_dtype(x, "float32") - self.offset) / self.scale
        return float((np.abs(q) > 127.5).mean())


def _affine(x: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (offset, scale) mapping the widened range of x onto the codes -127..127."""
    lo, hi = x.min(axis=0), x.max(axis=0)
    pad = (hi - lo) * margin
    lo, hi = lo - pad, hi + pad
    return ((hi + lo) / 2).astype(np.float32), np.where(hi > lo, (hi - lo) / 254.0, 1.0).astype(np.float32)


def _quantize(x: Array, offset: Array, scale: Array) -> Array:
    return as_dtype(((as_dtype(x, "float32") - offset) / scale).round().clip(-127, 127), "int8")


def _dequantize(q: Array, scale: Array, offset: Array) -> Array:
    v = as_dtype(q, "float32", copy=True)  # a buffer of our own: scaled in place, one temporary per shard
    v *= scale
    v += offset
    return v


STAGE = Int8  # what `codecs.KINDS` finds for the storage kind 'int8'
