"""Weighted similarity / rigid registration of point sets (Umeyama 1991, with per-point weights).

Solves ``min_{s,R,t} sum_k w_k || s R a_k + t - b_k ||^2`` in closed form (SVD of the weighted
cross-covariance, with the reflection fix).  Works on torch tensors (any float dtype, batched over
leading dimensions) and on numpy arrays (converted to float64 torch and back).
"""

from __future__ import annotations

import numpy as np
import torch


def weighted_umeyama(src, dst, weights=None, with_scale: bool = True):
    """Similarity ``(s, R, t)`` mapping ``src`` onto ``dst``: ``dst ~ s * R @ src + t``.

    ``src``, ``dst``: ``[..., N, 3]``; ``weights``: ``[..., N]`` (non-negative, default 1).
    Returns ``s [...]``, ``R [..., 3, 3]`` (proper rotation), ``t [..., 3]``; numpy in, numpy out.
    With ``with_scale=False`` the scale is fixed to 1 (rigid registration).
    """
    as_numpy = isinstance(src, np.ndarray)
    a = torch.as_tensor(np.asarray(src, dtype=np.float64) if as_numpy else src)
    b = torch.as_tensor(np.asarray(dst, dtype=np.float64) if as_numpy else dst, dtype=a.dtype)
    if weights is None:
        w = torch.ones(a.shape[:-1], dtype=a.dtype)
    else:
        w = torch.as_tensor(np.asarray(weights, dtype=np.float64) if as_numpy else weights, dtype=a.dtype)
    wsum = w.sum(-1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)
    wn = (w / wsum)[..., None]
    mu_a = (wn * a).sum(-2)
    mu_b = (wn * b).sum(-2)
    ac = a - mu_a[..., None, :]
    bc = b - mu_b[..., None, :]
    cov = (bc * wn).transpose(-1, -2) @ ac  # [..., 3, 3]: sum w (b - mb)(a - ma)^T
    U, S, Vh = torch.linalg.svd(cov)
    d = torch.sign(torch.linalg.det(U @ Vh))
    d = torch.where(d == 0, torch.ones_like(d), d)
    D = torch.ones(U.shape[:-1], dtype=a.dtype)
    D[..., 2] = d
    R = (U * D[..., None, :]) @ Vh
    if with_scale:
        var_a = (wn[..., 0] * (ac * ac).sum(-1)).sum(-1)
        s = (S * D).sum(-1) / var_a.clamp_min(torch.finfo(a.dtype).tiny)
    else:
        s = torch.ones(a.shape[:-2], dtype=a.dtype)
    t = mu_b - s[..., None] * (R @ mu_a[..., None])[..., 0]
    if as_numpy:
        return s.numpy(), R.numpy(), t.numpy()
    return s, R, t


def apply_similarity(s, R, t, pts):
    """``s * R @ p + t`` for points ``[..., N, 3]`` (broadcast over leading dims)."""
    if isinstance(pts, np.ndarray):
        return np.asarray(s)[..., None, None] * (pts @ np.swapaxes(R, -1, -2)) + np.asarray(t)[..., None, :]
    return s[..., None, None] * (pts @ R.transpose(-1, -2)) + t[..., None, :]


def similarity_to_matrix(s, R, t):
    """4x4 matrix(es) with the scale folded into the top three rows (DUSt3R's ``pw_poses`` layout)."""
    s, R, t = (np.asarray(x, dtype=np.float64) for x in (s, R, t))
    M = np.zeros(R.shape[:-2] + (4, 4))
    M[..., :3, :3] = s[..., None, None] * R
    M[..., :3, 3] = t
    M[..., 3, 3] = 1.0
    return M
