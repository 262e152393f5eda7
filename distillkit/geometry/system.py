"""The reduced (cameras + edges) Gauss-Newton system, assembled from per-image dense blocks; dense or sparse.

After the depths are eliminated, image ``k`` contributes one dense block over its camera and the edges
that observe it, so the system has ``(1 + K)^2`` non-zero 7x7 blocks per image.  Small systems are
assembled dense and solved by Cholesky (which also detects an indefinite model).  Large ones (200 images
with ``swin-5``: ``N`` ~ 15 000, 1.9 GB dense and ~40 s per dense Cholesky on one core) stay sparse
(~35 MB) and are solved by sparse LU (SuperLU with COLAMD ordering; the graph is near-banded, so the
fill-in stays small); the scale gauge there is a bordered (KKT) row instead of the dense projection.
"""

from __future__ import annotations

import numpy as np
import torch

DENSE_MAX = 3000  # unknowns up to which the system is dense


def _cholesky_solve(H: np.ndarray, g: np.ndarray):
    L, info = torch.linalg.cholesky_ex(torch.from_numpy(H))
    if int(info):
        return None
    return -torch.cholesky_solve(torch.from_numpy(g)[:, None], L)[:, 0].numpy()


def _project_gauge(H: np.ndarray, g: np.ndarray, sig_idx: np.ndarray):
    """``sum(d sig) = 0``: ``H <- P H P + c a a^T``, ``g <- P g`` with ``P = I - a a^T`` (``H`` in place)."""
    a = 1.0 / np.sqrt(len(sig_idx))
    Ha = H[:, sig_idx].sum(1) * a
    aHa = Ha[sig_idx].sum() * a
    c = float(H.diagonal()[sig_idx].mean())
    H[:, sig_idx] -= Ha[:, None] * a
    H[sig_idx, :] -= Ha[None, :] * a
    H[sig_idx[:, None], sig_idx[None, :]] += (aHa + c) * a * a
    g = g.copy()
    g[sig_idx] -= g[sig_idx].sum() * a * a
    return H, g


def solve_reduced(H: np.ndarray, g: np.ndarray, sig_idx: np.ndarray, norm_scale: bool):
    """Step ``-H^-1 g`` of a dense reduced system (``H`` is modified), with the scale gauge when
    ``norm_scale``; None if ``H`` is not positive definite."""
    if norm_scale:
        H, g = _project_gauge(H, g, sig_idx)
    return _cholesky_solve(H, g)


def _have_scipy() -> bool:
    try:  # a declared dependency; without it large systems fall back to dense (memory N^2 x 8 bytes)
        import scipy.sparse.linalg  # noqa: F401
        return True
    except ImportError:
        return False


class ReducedSystem:
    """``sum_k`` of dense blocks ``M_k`` at indices ``idx_k`` (index ``N`` = a dummy slot, dropped) and
    gradient pieces; ``solve(lam)`` adds Levenberg-Marquardt damping ``lam * diag`` and returns the step."""

    def __init__(self, N: int, dense: bool | None = None):
        self.N = N
        self.dense = (N <= DENSE_MAX or not _have_scipy()) if dense is None else dense
        self.g = np.zeros(N + 1)
        self.diag = np.zeros(N + 1)
        if self.dense:
            self.H = np.zeros((N + 1, N + 1))
        else:
            self.parts: list = []

    def add(self, idx: np.ndarray, M: np.ndarray, g: np.ndarray) -> None:
        np.add.at(self.g, idx, g)
        np.add.at(self.diag, idx, M.diagonal())
        if self.dense:
            self.H[idx[:, None], idx[None, :]] += M  # repeated indices are only ever the dummy slot
        else:
            self.parts.append((idx, M))

    def solve(self, lam: float, sig_idx: np.ndarray, norm_scale: bool, damp_diag: np.ndarray | None = None):
        N = self.N
        d = (self.diag if damp_diag is None else damp_diag)[:N]
        if self.dense:
            H = self.H[:N, :N].copy()
            H.flat[::N + 1] += lam * d + 1e-300
            return solve_reduced(H, self.g[:N], sig_idx, norm_scale)
        import scipy.sparse as sp
        from scipy.sparse.linalg import splu

        rows = np.concatenate([np.repeat(i, len(i)) for i, _ in self.parts])
        cols = np.concatenate([np.tile(i, len(i)) for i, _ in self.parts])
        vals = np.concatenate([M.ravel() for _, M in self.parts])
        keep = (rows < N) & (cols < N)
        rows, cols, vals = rows[keep], cols[keep], vals[keep]
        diag = np.arange(N)
        rows, cols = np.concatenate((rows, diag)), np.concatenate((cols, diag))
        vals = np.concatenate((vals, lam * d + 1e-12 * max(float(np.abs(d).max()), 1e-300)))
        g = self.g[:N]
        size = N
        if norm_scale:  # bordered row: sum(d sig) = 0 with a Lagrange multiplier
            a = np.full(len(sig_idx), N)
            rows = np.concatenate((rows, a, sig_idx))
            cols = np.concatenate((cols, sig_idx, a))
            vals = np.concatenate((vals, np.ones(2 * len(sig_idx))))
            g = np.concatenate((g, [0.0]))
            size = N + 1
        A = sp.csc_matrix((vals, (rows, cols)), shape=(size, size))
        try:
            x = -splu(A, permc_spec="COLAMD").solve(g)
        except RuntimeError:  # singular
            return None
        return x[:N]
