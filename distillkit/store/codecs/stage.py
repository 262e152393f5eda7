"""What every codec kind is made of: its fitted arrays and the maths that uses them, on numpy arrays and torch
tensors alike.

A kind's maths is written once, with what numpy and torch spell the same (`-`, `*=`, `@`, `.T`, `.reshape`,
`.round()`, `.clip()`); `as_dtype` spells the one thing they do not. A stage's arrays are numpy after fitting or
reading and tensors after `to(device)`, so one method decodes in the reader and on the training device.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, ClassVar, Union

import numpy as np

from distillkit_schemas.storage import Kind

if TYPE_CHECKING:  # torch is imported where tensors are made: `validate` and `inspect` start without it
    import torch

Array = Union[np.ndarray, "torch.Tensor"]


def as_dtype(x: Array, dtype: str, copy: bool = False) -> Array:
    """x as `dtype` ("float32", "int8", ...); x itself when it already is one, unless `copy`."""
    torch = sys.modules.get("torch")  # a tensor exists only once torch is imported
    if torch is not None and isinstance(x, torch.Tensor):
        return x.to(getattr(torch, dtype), copy=copy)
    return x.astype(dtype, copy=copy)


@dataclass
class Stage:
    """One kind of a storage string, fitted. The defaults store tokens as they come; subclasses add their arrays
    as fields named as the schema names them (`Kind.arrays`) and override what they change."""

    spec: Kind  # the kind as the schema parsed it (its argument, width, dtype)
    identity: ClassVar[bool] = False  # stores its input unchanged

    @classmethod
    def fit(cls, spec: Kind, x: np.ndarray, cls_tokens: np.ndarray) -> Stage:
        """Fit on x [n, W], what this stage will encode (float64 features, or what the stage before made of
        them), and the CLS tokens [m, C] (float64, full width)."""
        return cls(spec)

    @classmethod
    def from_arrays(cls, spec: Kind, arrays: dict[str, np.ndarray]) -> Stage:
        return cls(spec, **{f.name: arrays[f.name] for f in fields(cls)[1:]})

    def arrays(self) -> dict[str, Array]:
        return {f.name: getattr(self, f.name) for f in fields(self)[1:]}

    def to(self, device: torch.device | str) -> Stage:
        import torch

        return replace(self, **{k: torch.as_tensor(v, device=device) for k, v in self.arrays().items()})

    def encode(self, x: Array) -> Array:
        return x

    def decode(self, v: Array) -> Array:
        return v

    def encode_cls(self, x: Array) -> Array:
        return x

    def decode_cls(self, v: Array) -> Array:
        return v

    def retained_variance(self) -> float | None:
        """The share of its input's variance the stage keeps (None: all of it)."""
        return None

    def clip_fraction(self, x: np.ndarray) -> float | None:
        """The share of x's values beyond the stage's range (None: it has no range)."""
        return None
