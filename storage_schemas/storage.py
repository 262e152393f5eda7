"""How a teacher's patch tokens are stored (`TeacherProvenance.storage`): the contract, no torch needed.

A storage string is one kind, or kinds joined by `+` and applied left to right when writing:

    fp16         the teacher's dtype, full width (default)
    int8         per-channel affine int8: x = q * scale + offset          (codec/scale, codec/offset [C]);
                 the CLS token too, with its own (codec/cls_scale, codec/cls_offset [C])
    pca:K        K coefficients on the top-K principal directions, in the teacher's dtype:
                 x = c @ basis + mean                                     (codec/mean [C], codec/basis [K, C])
    pca:K+int8   the coefficients as per-coefficient affine int8          (+ codec/scale, codec/offset [K]);
                 the CLS token as in int8

codec/eigenvalues [C] (pca) holds the whole spectrum of the fitting sample: the retained variance of any K.
CLS tokens are always stored at full width (one token per sample): in the teacher's dtype, or int8 with `+int8`.

This module says what each kind stores; the maths of kind `x` is `distillkit/store/codecs/x.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

ArraySpecs = dict[str, tuple[tuple[int, ...], str, tuple[str, ...]]]  # name -> (shape, dtype, dimension names)


@dataclass(frozen=True)
class Kind:
    """One kind of a storage string as the store sees it: what it does to the width and dtype, which arrays it
    keeps under teachers/<t>/codec/."""

    name: ClassVar[str]
    rank: ClassVar[int | None]  # place in a chain: projections (0) before quantisers (1); None: only alone
    arg: ClassVar[str | None] = None  # its argument's letter (pca:K), if it takes one
    projects: ClassVar[bool] = False  # stores coefficients on a basis (CLS stays full width): coef_* statistics
    k: int | None = None  # the argument

    def width(self, width: int) -> int:
        return width

    def dtype(self, dtype: str) -> str:
        return dtype

    def arrays(self, width: int, dim: str, embed_dim: int) -> ArraySpecs:
        """Its codec arrays, given the width and dimension name of what it encodes."""
        return {}


class Fp16(Kind):
    name, rank = "fp16", None


class Int8(Kind):
    name, rank = "int8", 1

    def dtype(self, dtype: str) -> str:
        return "int8"

    def arrays(self, width: int, dim: str, embed_dim: int) -> ArraySpecs:
        # the CLS token is stored at the teacher's width whatever came before: it has a range of its own
        cls = ((embed_dim,), "float32", ("channel",))
        return {"scale": ((width,), "float32", (dim,)), "offset": ((width,), "float32", (dim,)),
                "cls_scale": cls, "cls_offset": cls}


class Pca(Kind):
    name, rank, arg, projects = "pca", 0, "K", True

    def width(self, width: int) -> int:
        return self.k

    def arrays(self, width: int, dim: str, embed_dim: int) -> ArraySpecs:
        return {"mean": ((width,), "float32", (dim,)), "basis": ((self.k, width), "float32", ("coefficient", dim)),
                "eigenvalues": ((width,), "float64", ("component",))}


KINDS: dict[str, type[Kind]] = {k.name: k for k in (Fp16, Int8, Pca)}


def _forms() -> list[str]:
    """Every accepted spelling: each kind alone, then chains of kinds of rising rank (pca:K+int8)."""
    chains = [[k] for k in KINDS.values()]
    for k in sorted((k for k in KINDS.values() if k.rank is not None), key=lambda k: k.rank):
        chains += [c + [k] for c in chains if all(m.rank is not None and m.rank < k.rank for m in c)]
    return ["+".join(f"{k.name}:{k.arg}" if k.arg else k.name for k in c) for c in chains]


FORMS = _forms()


@dataclass(frozen=True)
class Storage:
    name: str
    kinds: tuple[Kind, ...]

    def width(self, embed_dim: int) -> int:
        for kind in self.kinds:
            embed_dim = kind.width(embed_dim)
        return embed_dim

    def dtype(self, teacher_dtype: str) -> str:
        for kind in self.kinds:
            teacher_dtype = kind.dtype(teacher_dtype)
        return teacher_dtype

    @property
    def projects(self) -> bool:
        """The patch array holds coefficients (decode `coeffs` serves them; their statistics are kept too)."""
        return any(k.projects for k in self.kinds)

    @property
    def fitted(self) -> bool:
        """It keeps arrays fitted on a calibration sample (under teachers/<t>/codec/)."""
        return bool(self.codec_arrays(1))

    @property
    def dim(self) -> str:
        """The name of the patch array's last dimension."""
        return "coefficient" if self.projects else "channel"

    def codec_arrays(self, embed_dim: int) -> ArraySpecs:
        """name -> (shape, dtype, dims) of the arrays under teachers/<t>/codec/, in chain order."""
        out: ArraySpecs = {}
        width, dim = embed_dim, "channel"
        for kind in self.kinds:
            out.update(kind.arrays(width, dim, embed_dim))
            width, dim = kind.width(width), "coefficient" if kind.projects else dim
        return out

    def bytes_per_sample(self, grid_hw, embed_dim: int, teacher_dtype: str = "float16") -> int:
        """Stored bytes of one sample of one teacher (patch tokens + the full-width CLS token), uncompressed."""
        tokens = int(np.prod(grid_hw))
        return (tokens * self.width(embed_dim) + embed_dim) * np.dtype(self.dtype(teacher_dtype)).itemsize


def parse_storage(value: str, embed_dim: int | None = None) -> Storage:
    """One of `FORMS` (fp16 | int8 | pca:K | pca:K+int8); raises ValueError naming what is wrong."""
    text = str(value).strip()
    kinds = [_parse_kind(part, value, embed_dim) for part in text.split("+")]
    ranks = [k.rank for k in kinds]
    if len(kinds) > 1 and (None in ranks or ranks != sorted(set(ranks))):
        raise _malformed(value)
    return Storage(text, tuple(kinds))


def _parse_kind(part: str, value: str, embed_dim: int | None) -> Kind:
    name, colon, arg = part.partition(":")
    kind = KINDS.get(name)
    takes_arg = kind is not None and kind.arg is not None
    if kind is None or bool(colon) != takes_arg or (takes_arg and not (arg.isascii() and arg.isdigit())):
        raise _malformed(value)
    if not takes_arg:
        return kind()
    k = int(arg)
    if k < 1 or (embed_dim is not None and k > embed_dim):
        raise ValueError(f"storage {value!r}: {kind.arg} must be between 1 and the teacher width {embed_dim}")
    return kind(k)


def _malformed(value: str) -> ValueError:
    args = sorted({k.arg for k in KINDS.values() if k.arg})
    return ValueError(f"storage {value!r} is not one of {', '.join(FORMS)} "
                      f"({', '.join(args)} a positive integer)")
