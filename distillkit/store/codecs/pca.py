"""pca:K: K coefficients on the top-K principal directions, c = (x - mean) @ basis.T, x ~ c @ basis + mean.

The basis comes from the exact float64 mean and covariance of the calibration tokens: eigenvectors, largest
eigenvalues first, each one's sign fixed so that its largest component is positive (the same basis on every run).
The whole spectrum is kept (`eigenvalues`): the retained variance of any K. The CLS token is stored at full width;
its coefficients, when training in the reduced space, are computed from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from distillkit.store.codecs.stage import Array, Stage, as_dtype


@dataclass
class Pca(Stage):
    mean: Array  # [C]
    basis: Array  # [K, C], orthonormal rows
    eigenvalues: Array  # [C], float64, largest first

    @classmethod
    def fit(cls, spec, x: np.ndarray, cls_tokens: np.ndarray) -> "Pca":
        vals, vecs, mean = spectrum(x)
        return cls(spec, mean.astype(np.float32), vecs[:, :spec.k].T.astype(np.float32), vals)

    def encode(self, x: Array) -> Array:
        """[..., C] -> float32 coefficients [..., K] (one matrix product over all tokens)."""
        v = as_dtype(x, "float32")
        return ((v.reshape(-1, v.shape[-1]) - self.mean) @ self.basis.T).reshape(*v.shape[:-1], -1)

    def decode(self, c: Array) -> Array:
        """[..., K] -> float32 features [..., C]."""
        v = as_dtype(c, "float32")
        out = v.reshape(-1, v.shape[-1]) @ self.basis
        out += self.mean
        return out.reshape(*v.shape[:-1], -1)

    def retained_variance(self) -> float:
        total = float(self.eigenvalues.sum())
        return float(self.eigenvalues[: self.spec.k].sum() / total) if total > 0 else 1.0


def spectrum(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(eigenvalues, eigenvectors as columns, mean) of the float64 covariance of tokens [n, C], largest first."""
    x = np.asarray(tokens, np.float64)
    mean = x.mean(axis=0)
    centred = x - mean
    cov = centred.T @ centred / max(len(x), 1)
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1]
    vals, vecs = np.clip(vals[order], 0, None), vecs[:, order]
    vecs *= np.sign(vecs[np.abs(vecs).argmax(axis=0), np.arange(vecs.shape[1])])
    return vals, vecs, mean


STAGE = Pca  # what `codecs.KINDS` finds for the storage kind 'pca'
