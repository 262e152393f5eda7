"""A codec: the stages of a storage string, applied in order when writing and undone in reverse when reading.

`pca:K+int8` projects, then quantises the coefficients; what decode `coeffs` serves is what the stages after the
projection hold. The CLS token goes through the stages that keep it (a projection does not: CLS is stored full
width).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Literal

import numpy as np

from distillkit_schemas.storage import Storage

from distillkit.store.codecs.stage import Array, Stage, as_dtype
from distillkit.store.writer import TeacherShard

if TYPE_CHECKING:
    import torch

Token = Literal["patch", "cls"]
Target = Literal["full", "coeffs"]


class Codec:
    def __init__(self, storage: Storage, stages: list[Stage]):
        self.storage = storage
        self.stages = stages
        self._projected = max((i + 1 for i, s in enumerate(stages) if s.spec.projects), default=0)

    @property
    def is_identity(self) -> bool:
        return all(s.identity for s in self.stages)

    def encode(self, x: Array, dtype: str, token: Token = "patch") -> Array:
        """Features [..., C] in the teacher's `dtype` -> what the patch (or cls) array stores."""
        for s in self.stages:
            x = s.encode_cls(x) if token == "cls" else s.encode(x)
        return as_dtype(x, self.storage.dtype(dtype))

    def decode(self, stored: Array, token: Token = "patch", target: Target = "full",
               dtype: str | None = None) -> Array:
        """Stored values -> features at the teacher's width (`full`) or a projection's coefficients (`coeffs`), on
        numpy arrays or torch tensors. With `dtype` (the reader: the teacher's) the result is cast to it, except
        CLS coefficients: float32, as they vary little across images and fp16 would round much of that away.
        Without, it stays as the last stage left it (float32 where any decoded)."""
        if token == "cls":
            v = stored
            for s in reversed(self.stages):
                v = s.decode_cls(v)
            v = v if dtype is None else as_dtype(v, dtype)
            return self._project(v) if target == "coeffs" else v
        v = stored
        for s in reversed(self.stages[self._projected:] if target == "coeffs" else self.stages):
            v = s.decode(v)
        return v if dtype is None else as_dtype(v, dtype)

    def _project(self, v: Array) -> Array:
        for s in self.stages[:self._projected]:
            v = s.encode(v)
        return v

    def encode_shard(self, patch: np.ndarray, cls: np.ndarray, ok: np.ndarray, dtype: str) -> TeacherShard:
        """One shard's tokens as the store keeps them, with what readers will decode from them. Rejected rows
        (~ok, NaN) are encoded as zeros, as int8 has no NaN; float codes get their NaN rows back."""
        if self.is_identity:
            return TeacherShard(patch=patch, cls=cls)
        stored = self.encode(np.where(ok[:, None, None, None], patch, 0).astype(patch.dtype), dtype)
        stored_cls = self.encode(np.where(ok[:, None], cls, 0).astype(cls.dtype), dtype, "cls")
        if stored.dtype.kind == "f":
            stored[~ok], stored_cls[~ok] = np.nan, np.nan
        return self.readback(stored, stored_cls, dtype)

    def readback(self, stored: np.ndarray, stored_cls: np.ndarray, dtype: str) -> TeacherShard:
        """Stored tokens with what readers decode from them, which the statistics describe: the features, and for
        a projection its coefficients too."""
        coef = self.storage.projects
        return TeacherShard(patch=stored, cls=stored_cls, decoded=self.decode(stored, dtype=dtype),
                            decoded_cls=self.decode(stored_cls, "cls", dtype=dtype),
                            coef_patch=self.decode(stored, target="coeffs") if coef else None,
                            coef_cls=self.decode(stored_cls, "cls", "coeffs", dtype) if coef else None)

    def to(self, device: torch.device | str) -> Codec:
        """The codec with its arrays on `device`: `decode` then takes tensors there."""
        return Codec(self.storage, [s.to(device) for s in self.stages])

    def arrays(self) -> dict[str, np.ndarray]:
        """What teachers/<t>/codec/ keeps, in chain order."""
        return {name: a for s in self.stages for name, a in s.arrays().items()}

    def sha256(self) -> str:
        """Of the codec arrays ('' without any)."""
        arrays = self.arrays()
        if not arrays:
            return ""
        h = hashlib.sha256()
        for k, v in sorted(arrays.items()):
            h.update(k.encode())
            h.update(np.ascontiguousarray(v).tobytes())
        return h.hexdigest()

    def retained_variance(self) -> float | None:
        return next((v for s in self.stages if (v := s.retained_variance()) is not None), None)

    def clip_fraction(self, x: np.ndarray) -> float | None:
        """The share of values a quantiser clips when encoding x (None without one)."""
        for s in self.stages:
            frac = s.clip_fraction(x)
            if frac is not None:
                return frac
            x = s.encode(x)
        return None
