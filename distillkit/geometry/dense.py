"""Dense stage: per-pixel depths at full resolution with cameras and pair similarities held fixed, plus
full-resolution residual statistics.  Streams one image and one pixel chunk at a time.

With the cameras and the edge similarities fixed, the objective separates into one convex 1-D problem
per pixel: the world point ``P = t + d v`` (``v`` = the pixel's ray, ``R [(u-cx)/f, (v-cy)/f, 1]``) should
be near the aligned predictions ``A_k`` of that pixel, ``min_d sum_k w_k ||d v - q_k||`` with
``q_k = A_k - t``.  Writing ``a = |v|^2``, ``tau_k = v.q_k / a`` and ``rho_k^2 = |q_k|^2 - a tau_k^2``, each
term is ``w_k sqrt(a (d - tau_k)^2 + rho_k^2)``: only three scalars per (observation, pixel) are kept.
Start from the weighted least-squares depth, then safeguarded Newton steps (falling back to the
monotone Weiszfeld/IRLS step wherever Newton does not lower the pixel's objective).
"""

from __future__ import annotations

import math

import numpy as np

from .cameras import pixel_offsets
from .predictions import PairPredictions


def _pixel_terms(preds: PairPredictions, k: int, sl: slice, v: np.ndarray, t: np.ndarray, sR, T):
    """``(w [K, C], tau [K, C], rho2 [K, C], eids [K])`` for image ``k``'s pixels ``sl``."""
    H, W = preds.hw
    ob = preds.observations(k)
    C = v.shape[1]
    a = (v * v).sum(0)
    w = np.empty((len(ob), C))
    tau = np.empty((len(ob), C))
    rho2 = np.empty((len(ob), C))
    for n, (e, side) in enumerate(ob):
        X = np.asarray(preds.points(e, side)).reshape(H * W, 3)[sl].astype(np.float64)
        q = X @ sR[e].T + (T[e] - t)  # [C, 3]
        b = (q * v.T).sum(1)
        tau[n] = b / a
        rho2[n] = np.maximum((q * q).sum(1) - b * tau[n], 0.0)
        w[n] = np.log(np.maximum(np.asarray(preds.conf(e, side)).reshape(H * W)[sl], 1.0))
    return w, tau, rho2, np.array([e for e, _ in ob], dtype=np.int64)


def _solve_pixels(w, tau, rho2, a, d, iters: int, eps: float):
    def objective(dd):
        return (w * np.sqrt(a * (dd - tau) ** 2 + rho2)).sum(0)

    f = objective(d)
    for _ in range(iters):
        dt = d - tau
        nr = np.maximum(np.sqrt(a * dt * dt + rho2), eps)
        om = w / nr
        g = (om * a * dt).sum(0)
        h_irls = (om * a).sum(0)
        h_newton = (om * a * (rho2 / (nr * nr))).sum(0)
        safe = np.maximum(h_irls, 1e-300)
        d_irls = d - g / safe
        ok = h_newton > 1e-9 * h_irls
        d_newton = np.where(ok, d - g / np.where(ok, h_newton, 1.0), d_irls)
        f_newton = objective(d_newton)
        take = (f_newton <= f) & (d_newton > 0)
        d_new = np.where(take, d_newton, d_irls)
        f_new = np.where(take, f_newton, objective(d_irls))
        better = f_new <= f
        if not better.any():
            break
        d, f = np.where(better, d_new, d), np.where(better, f_new, f)
    return d, f


def dense_depths(preds: PairPredictions, R, t, focals, sR, T, pp=None, depth=None, iters: int = 8,
                 chunk: int = 65536):
    """Full-resolution depths ``[n, H, W]`` (solved, or ``depth`` kept when given) and residual statistics.

    ``R [n,3,3]``, ``t [n,3]``, ``focals [n]``: cameras; ``sR [E,3,3]`` (scale folded in), ``T [E,3]``: edges.
    Returns ``(depth, stats)``; ``stats`` has the full-resolution loss (official normalisation),
    per-edge and per-image loss shares, and mean / percentile distances (absolute and over depth).
    """
    H, W = preds.hw
    n, E = preds.n_images, preds.n_edges
    out = np.empty((n, H, W), np.float32)
    edge_loss = np.zeros(E)
    image_loss = np.zeros(n)
    sum_dist = sum_rel = 0.0
    count = 0
    hist_edges = np.concatenate(([0.0], np.geomspace(1e-9, 10.0, 2001)))
    hist = np.zeros(len(hist_edges) - 1)
    for k in range(n):
        for c0 in range(0, H * W, chunk):
            sl = slice(c0, min(c0 + chunk, H * W))
            off = pixel_offsets(H, W, pp, np.arange(sl.start, sl.stop))
            v = R[k] @ np.concatenate((off / focals[k], np.ones((1, off.shape[1]))), 0)
            a = (v * v).sum(0)
            w, tau, rho2, eids = _pixel_terms(preds, k, sl, v, t[k], sR, T)
            if depth is None:
                ws = w.sum(0)
                d0 = np.where(ws > 0, (w * tau).sum(0) / np.maximum(ws, 1e-300), tau.mean(0))
                scale = float(np.median(np.abs(d0))) if d0.size else 1.0
                d0 = np.maximum(d0, 1e-6 * max(scale, 1e-12))
                d, _ = _solve_pixels(w, tau, rho2, a, d0, iters, 1e-12 * max(scale, 1e-12))
            else:
                d = np.asarray(depth[k], np.float64).reshape(-1)[sl]
            out[k].reshape(-1)[sl] = d
            dist = np.sqrt(a * (d - tau) ** 2 + rho2)  # [K, C]
            wd = (w * dist).sum(1)
            np.add.at(edge_loss, eids, wd)
            image_loss[k] += wd.sum()
            rel = dist / np.maximum(d, 1e-300)
            sum_dist += float(dist.sum())
            sum_rel += float(rel.sum())
            count += dist.size
            hist += np.histogram(np.clip(rel, 0, 10.0), hist_edges)[0]
    norm = float(E * H * W)

    def quantile(p):
        c = np.cumsum(hist)
        return float(hist_edges[1:][np.searchsorted(c, p * c[-1])]) if c[-1] else math.nan

    stats = {"loss": float(edge_loss.sum() / norm), "edge_loss": edge_loss / norm, "image_loss": image_loss / norm,
             "mean_dist": sum_dist / max(count, 1), "mean_rel_dist": sum_rel / max(count, 1),
             "median_rel_dist": quantile(0.5), "p90_rel_dist": quantile(0.9)}
    return out, stats
