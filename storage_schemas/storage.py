"""How a teacher's patch tokens are stored (`TeacherProvenance.storage`): the contract, no torch needed.

    fp16         the teacher's dtype, full width (default)
    int8         per-channel affine int8: x = q * scale + offset          (codec/scale, codec/offset [C]);
                 the CLS token too, with its own (codec/cls_scale, codec/cls_offset [C])
    pca:K        K coefficients on the top-K principal directions, in the teacher's dtype:
                 x = c @ basis + mean                                     (codec/mean [C], codec/basis [K, C])
    pca:K+int8   the coefficients as per-coefficient affine int8          (+ codec/scale, codec/offset [K]);
                 the CLS token as in int8

codec/eigenvalues [C] (pca) holds the whole spectrum of the fitting sample: the retained variance of any K.
CLS tokens are always stored at full width (one token per sample): in the teacher's dtype, or int8 with `+int8`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PATTERN = re.compile(r"^(fp16|int8|pca:(\d+)(\+int8)?)$")


@dataclass(frozen=True)
class Storage:
    name: str
    pca_k: int | None  # None: no projection
    int8: bool

    def width(self, embed_dim: int) -> int:
        return self.pca_k if self.pca_k is not None else embed_dim

    def dtype(self, teacher_dtype: str) -> str:
        return "int8" if self.int8 else teacher_dtype

    def codec_arrays(self, embed_dim: int) -> dict[str, tuple[tuple[int, ...], str]]:
        """name -> (shape, dtype) of the arrays under teachers/<t>/codec/."""
        out: dict[str, tuple[tuple[int, ...], str]] = {}
        if self.pca_k is not None:
            out["mean"] = ((embed_dim,), "float32")
            out["basis"] = ((self.pca_k, embed_dim), "float32")
            out["eigenvalues"] = ((embed_dim,), "float64")
        if self.int8:
            w = self.width(embed_dim)
            out["scale"] = ((w,), "float32")
            out["offset"] = ((w,), "float32")
            out["cls_scale"] = ((embed_dim,), "float32")
            out["cls_offset"] = ((embed_dim,), "float32")
        return out


def parse_storage(value: str, embed_dim: int | None = None) -> Storage:
    """`fp16` | `int8` | `pca:K` | `pca:K+int8`; raises ValueError naming what is wrong."""
    m = _PATTERN.match(str(value).strip())
    if not m:
        raise ValueError(f"storage {value!r} is not one of fp16, int8, pca:K, pca:K+int8 (K a positive integer)")
    if m.group(2) is None:
        return Storage(m.group(1), None, m.group(1) == "int8")
    k = int(m.group(2))
    if k < 1 or (embed_dim is not None and k > embed_dim):
        raise ValueError(f"storage {value!r}: K must be between 1 and the teacher width {embed_dim}")
    return Storage(m.group(1), k, m.group(3) is not None)
