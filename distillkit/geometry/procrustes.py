"""Weighted similarity / rigid registration of point sets (Umeyama 1991, with per-point weights).

Solves ``min_{s,R,t} sum_k w_k || s R a_k + t - b_k ||^2`` in closed form (SVD of the weighted
cross-covariance, with the reflection fix).  numpy float64, batched over leading dimensions.
"""

from __future__ import annotations

import numpy as np


def weighted_umeyama(src, dst, weights=None, with_scale: bool = True):
    """Similarity ``(s, R, t)`` mapping ``src`` onto ``dst``: ``dst ~ s * R @ src + t``.

    ``src``, ``dst``: ``[..., N, 3]``; ``weights``: ``[..., N]`` (non-negative, default 1).
    Returns ``s [...]``, ``R [..., 3, 3]`` (a proper rotation), ``t [..., 3]``.  With
    ``with_scale=False`` the scale is fixed to 1 (rigid registration).
    """
    a = np.asarray(src, dtype=np.float64)
    b = np.asarray(dst, dtype=np.float64)
    w = np.ones(a.shape[:-1]) if weights is None else np.broadcast_to(np.asarray(weights, np.float64), a.shape[:-1])
    wn = w / np.maximum(w.sum(-1, keepdims=True), 1e-300)
    mu_a = np.einsum("...n,...nc->...c", wn, a)
    mu_b = np.einsum("...n,...nc->...c", wn, b)
    ac = a - mu_a[..., None, :]
    bc = b - mu_b[..., None, :]
    cov = np.einsum("...n,...nc,...nd->...cd", wn, bc, ac)  # sum w (b - mb)(a - ma)^T
    U, S, Vh = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(U @ Vh))
    d = np.where(d == 0, 1.0, d)
    D = np.ones(U.shape[:-1])
    D[..., 2] = d
    R = (U * D[..., None, :]) @ Vh
    if with_scale:
        var_a = np.einsum("...n,...n->...", wn, (ac * ac).sum(-1))
        s = (S * D).sum(-1) / np.maximum(var_a, 1e-300)
    else:
        s = np.ones(a.shape[:-2])
    t = mu_b - s[..., None] * np.einsum("...cd,...d->...c", R, mu_a)
    return s, R, t


def apply_similarity(s, R, t, pts):
    """``s * R @ p + t`` for points ``[..., N, 3]`` (broadcast over leading dims)."""
    return np.asarray(s)[..., None, None] * (pts @ np.swapaxes(R, -1, -2)) + np.asarray(t)[..., None, :]


def similarity_to_matrix(s, R, t):
    """4x4 matrix(es) with the scale folded into the top three rows (DUSt3R's ``pw_poses`` layout)."""
    s, R, t = (np.asarray(x, dtype=np.float64) for x in (s, R, t))
    M = np.zeros(R.shape[:-2] + (4, 4))
    M[..., :3, :3] = s[..., None, None] * R
    M[..., :3, 3] = t
    M[..., 3, 3] = 1.0
    return M
