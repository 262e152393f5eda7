"""Compact patch targets (int8, PCA, PCA + int8): fitting, encoding at write time, decoding at read time.

The codec is fitted once, before the store is created, from the teacher's own output on a calibration sample of
training images (evenly spread over the sample table, fixed batches: the same fit on every run): the exact
float64 mean and covariance of its patch tokens give the PCA basis (eigenvectors, largest eigenvalues first, sign
fixed so that each vector's largest component is positive), and the per-channel range of what int8 stores gives
the affine scale/offset. Per-channel (not per-token) int8 keeps the bytes at exactly half of fp16; ViT features
have a few channels with much larger range than the rest, which per-channel scaling absorbs. Values outside the
calibration range are clipped (counted by `distillkit bench storage`). The codec is stored beside the data and
kept for every append, so old and new shards decode the same way.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import zarr

from distillkit_schemas.storage import Storage, parse_storage

MARGIN = 0.05  # int8 range widened by 5 % on each side of the calibration range: headroom for unseen images
CLS_MARGIN = 0.5  # one CLS token per image: a much smaller calibration sample, so far more headroom


@dataclass
class Codec:
    storage: Storage
    mean: np.ndarray | None = None  # [C] (pca)
    basis: np.ndarray | None = None  # [K, C] (pca)
    eigenvalues: np.ndarray | None = None  # [C] (pca)
    scale: np.ndarray | None = None  # [W] (int8)
    offset: np.ndarray | None = None  # [W] (int8)
    cls_scale: np.ndarray | None = None  # [C] (int8: the CLS token has its own range)
    cls_offset: np.ndarray | None = None  # [C]

    @property
    def is_identity(self) -> bool:
        return self.storage.pca_k is None and not self.storage.int8

    # ---- fit ------------------------------------------------------------------------------------------------
    @classmethod
    def fit(cls, storage: str | Storage, tokens: np.ndarray, cls_tokens: np.ndarray | None = None) -> "Codec":
        """tokens: [n, C] patch tokens as the teacher's dtype holds them; cls_tokens: [m, C] (int8 storage)."""
        st = parse_storage(storage, tokens.shape[-1]) if isinstance(storage, str) else storage
        codec = cls(st)
        x = np.asarray(tokens, np.float64)
        if st.pca_k is not None:
            mean = x.mean(axis=0)
            centred = x - mean
            cov = centred.T @ centred / max(len(x), 1)
            vals, vecs = np.linalg.eigh(cov)
            order = np.argsort(vals)[::-1]
            vals, vecs = np.clip(vals[order], 0, None), vecs[:, order]
            vecs *= np.sign(vecs[np.abs(vecs).argmax(axis=0), np.arange(vecs.shape[1])])
            codec.mean, codec.eigenvalues = mean.astype(np.float32), vals
            codec.basis = vecs[:, :st.pca_k].T.astype(np.float32)
            x = codec.project(x)
        if st.int8:
            codec.offset, codec.scale = _affine(x)
            codec.cls_offset, codec.cls_scale = _affine(np.asarray(tokens if cls_tokens is None else cls_tokens,
                                                                   np.float64), CLS_MARGIN)
        return codec

    # ---- encode / decode ----------------------------------------------------------------------------------------
    def project(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, np.float32) - self.mean) @ self.basis.T

    def encode(self, x: np.ndarray, dtype: str) -> np.ndarray:
        """[..., C] in the teacher dtype -> what the patch array stores ([..., W], int8 or the teacher dtype)."""
        if self.is_identity:
            return x
        shape = x.shape[:-1]
        v = np.asarray(x, np.float32).reshape(-1, x.shape[-1])
        if self.storage.pca_k is not None:
            v = self.project(v)
        if self.storage.int8:
            return _quantize(v, self.offset, self.scale).reshape(*shape, -1)
        return v.astype(dtype).reshape(*shape, -1)

    def encode_cls(self, cls: np.ndarray, dtype: str) -> np.ndarray:
        return _quantize(np.asarray(cls, np.float32), self.cls_offset, self.cls_scale) if self.storage.int8 else cls

    def decode_cls(self, stored: np.ndarray, dtype: str = "float16") -> np.ndarray:
        if not self.storage.int8:
            return stored
        v = stored.astype(np.float32)
        v *= self.cls_scale
        v += self.cls_offset
        return v.astype(dtype)

    def coefficients(self, stored: np.ndarray) -> np.ndarray:
        """Stored values -> the W-dim values they stand for (PCA coefficients, or features for int8), float32."""
        v = np.asarray(stored, np.float32)
        if self.storage.int8:  # in place: one temporary for a whole shard
            v = v.copy() if v is stored else v
            v *= self.scale
            v += self.offset
        return v

    def decode(self, stored: np.ndarray, dtype: str = "float16") -> np.ndarray:
        """Stored values -> features at the teacher's full width."""
        if self.is_identity:
            return stored
        v = self.coefficients(stored)
        if self.storage.pca_k is not None:
            shape = v.shape[:-1]
            v = (v.reshape(-1, v.shape[-1]) @ self.basis + self.mean).reshape(*shape, -1)
        return v.astype(dtype)

    def cls_coefficients(self, cls: np.ndarray) -> np.ndarray:
        """CLS tokens (stored at full width) on the same PCA basis, for training in the reduced space."""
        return self.project(cls).astype(np.float32) if self.storage.pca_k is not None else cls

    # ---- persistence ----------------------------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        names = {"mean": self.mean, "basis": self.basis, "eigenvalues": self.eigenvalues, "scale": self.scale,
                 "offset": self.offset, "cls_scale": self.cls_scale, "cls_offset": self.cls_offset}
        return {k: v for k, v in names.items() if v is not None}

    def sha256(self) -> str:
        if self.is_identity:
            return ""
        h = hashlib.sha256()
        for k, v in sorted(self.arrays().items()):
            h.update(k.encode())
            h.update(np.ascontiguousarray(v).tobytes())
        return h.hexdigest()

    def retained_variance(self) -> float | None:
        if self.eigenvalues is None:
            return None
        total = float(self.eigenvalues.sum())
        return float(self.eigenvalues[: self.storage.pca_k].sum() / total) if total > 0 else 1.0

    @classmethod
    def read(cls, group: zarr.Group, teacher: str, storage: str) -> "Codec":
        st = parse_storage(storage)
        codec = cls(st)
        if codec.is_identity:
            return codec
        for name in st.codec_arrays(1):
            setattr(codec, name, group[f"teachers/{teacher}/codec/{name}"][:])
        return codec


def _affine(x: np.ndarray, margin: float = MARGIN) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (offset, scale) mapping the widened calibration range onto the int8 codes -127..127."""
    lo, hi = x.min(axis=0), x.max(axis=0)
    pad = (hi - lo) * margin
    lo, hi = lo - pad, hi + pad
    return ((hi + lo) / 2).astype(np.float32), np.where(hi > lo, (hi - lo) / 254.0, 1.0).astype(np.float32)


def _quantize(v: np.ndarray, offset: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return np.clip(np.rint((v - offset) / scale), -127, 127).astype(np.int8)


def bytes_per_sample(grid_hw, embed_dim: int, storage: str, teacher_dtype: str = "float16") -> int:
    """Stored bytes of one sample of one teacher (patch tokens + the full-width CLS token), uncompressed."""
    st = parse_storage(storage, embed_dim)
    tokens = int(np.prod(grid_hw))
    return (tokens * st.width(embed_dim) + embed_dim) * np.dtype(st.dtype(teacher_dtype)).itemsize


def storage_summary(group: zarr.Group, teacher: str, prov) -> dict:
    """What `inspect` shows per teacher: the storage, its bytes per sample, the ratio to fp16, PCA variance."""
    codec = Codec.read(group, teacher, prov.storage)
    got = bytes_per_sample(prov.grid_hw, prov.embed_dim, prov.storage, prov.dtype)
    fp16 = bytes_per_sample(prov.grid_hw, prov.embed_dim, "fp16", "float16")
    return {"storage": prov.storage, "bytes_per_sample": got, "ratio_vs_fp16": got / fp16,
            "retained_variance": codec.retained_variance(), "storage_sha256": prov.storage_sha256}
