"""Dense stage: per-pixel depths at full resolution with cameras and pair similarities held fixed, plus
full-resolution residual statistics.  Streams one image and one pixel chunk at a time.

With the cameras and the edge similarities fixed, the objective separates into one convex 1-D problem
per pixel: the world point ``P = t + d v`` (``v`` = the pixel's ray, ``R [(u-cx)/f, (v-cy)/f, 1]``) should
be near the aligned predictions ``A_k`` of that pixel, ``min_d sum_k w_k ||d v - q_k||`` with
``q_k = A_k - t``.  Writing ``a = |v|^2``, ``tau_k = v.q_k / a`` and ``rho_k^2 = |q_k|^2 - a tau_k^2``, each
term is ``w_k sqrt(a (d - tau_k)^2 + rho_k^2)``: only three scalars per (observation, pixel) are kept.
Start from the weighted least-squares depth ``d0``, then safeguarded Newton iterations inside a bracket
(bisection where Newton misbehaves) on ``d - d0`` in float32, pixels leaving the working set as they
converge (to ~3e-8 of the depth).
"""

from __future__ import annotations

import math

import numpy as np

from distillkit.geometry.cameras import pixel_offsets
from distillkit.geometry.predictions import PairPredictions
from distillkit.geometry.problem import Problem, State, mm


def _image_predictions(preds: PairPredictions, k: int):
    """Image ``k``'s observations ``[(edge, side)]`` with their points ``[H*W, 3]`` and confidences ``[H*W]``,
    each edge read once (lazy edge arrays would otherwise be read again for every pixel chunk)."""
    H, W = preds.hw
    ob = preds.observations(k)
    return ob, [np.asarray(preds.points(e, s)).reshape(H * W, 3) for e, s in ob], \
        [np.asarray(preds.conf(e, s)).reshape(H * W) for e, s in ob]


def _pixel_terms(image, sl: slice, v: np.ndarray, a: np.ndarray, t: np.ndarray, sR, T):
    """``(w, tau, rho2)`` as ``[K, C]`` float64 arrays and the edge ids ``[K]`` for pixels ``sl`` of an image
    (``_image_predictions``)."""
    ob, pts, confs = image
    C = v.shape[1]
    w, tau, rho2 = np.empty((len(ob), C)), np.empty((len(ob), C)), np.empty((len(ob), C))
    for n, (e, _) in enumerate(ob):
        X = pts[n][sl].T.astype(np.float64)  # [3, C]
        q = mm(sR[e], X)
        q += (T[e] - t)[:, None]
        b = (q * v).sum(0)
        np.divide(b, a, out=tau[n])
        np.maximum((q * q).sum(0) - b * tau[n], 0.0, out=rho2[n])
        np.log(np.maximum(confs[n][sl], 1.0), out=w[n])
    return w, tau, rho2, np.array([e for e, _ in ob], dtype=np.int64)


def _solve_pixels(w, tau, rho2, a, lo, hi, x0, tol, iters: int = 60):
    """Per-pixel minimisers of ``f(x) = sum_k w_k sqrt(a (x - tau_k)^2 + rho2_k)`` over ``[lo, hi]`` (arrays
    ``[K, C]``; ``a``, bounds, start ``x0`` and absolute tolerance ``tol`` ``[C]``).  ``f`` is convex with its
    minimiser in ``[min tau, max tau]``: safeguarded Newton on ``f' = 0`` inside a shrinking bracket,
    bisecting whenever the Newton point leaves the bracket or oscillates across the minimum without
    halving its step (near-kinks of terms with tiny ``rho`` make plain Newton oscillate).  Converged
    pixels leave the working set."""
    lo, hi = lo.copy(), hi.copy()
    x_all = np.clip(x0, lo, hi)
    step_old = hi - lo
    g_old = np.zeros_like(x_all)
    act = np.flatnonzero(hi - lo > tol)
    W, T, Q, A = w[:, act], tau[:, act], rho2[:, act], a[act]
    tiny = np.finfo(w.dtype).tiny
    for _ in range(iters):
        if act.size == 0:
            break
        x = x_all[act]
        dt = x - T
        nr = np.sqrt(A * dt * dt + Q)
        np.maximum(nr, tiny, out=nr)
        om = W / nr
        g = (om * dt).sum(0) * A
        h = (om * Q / (nr * nr)).sum(0) * A
        l, u = lo[act], hi[act]
        l = np.where(g < 0, x, l)
        u = np.where(g > 0, x, u)
        newton = x - g / np.maximum(h, tiny)
        dn = np.abs(newton - x)
        tl = tol[act]
        flip = g * g_old[act] < 0  # oscillating across the minimum: Newton must at least halve its step
        use = (newton >= l) & (newton <= u) & (h > 0) & ~(flip & (dn > 0.5 * step_old[act]) & (dn > tl))
        x_new = np.where(use, newton, 0.5 * (l + u))
        x_new = np.where(g == 0, x, x_new)
        lo[act], hi[act], x_all[act] = l, u, x_new
        step_old[act] = np.abs(x_new - x)
        g_old[act] = g
        done = (np.abs(x_new - x) <= tl) | (u - l <= tl) | (g == 0)
        if done.any():
            keep = ~done
            act = act[keep]
            if act.size < 0.7 * keep.size:  # compact the working set
                W, T, Q, A = w[:, act], tau[:, act], rho2[:, act], a[act]
            else:
                W, T, Q, A = W[:, keep], T[:, keep], Q[:, keep], A[keep]
    return x_all


def _depths(w, tau, rho2, a, iters: int, rtol: float = 3e-8):
    """Per-pixel optimal depths ``[C]`` (float64) and distances ``[K, C]``: weighted least-squares start
    ``d0``, then the 1-D solve in float32 on ``x = d - d0`` (well conditioned: ``|x| << d0``)."""
    ws = w.sum(0)
    d0 = np.where(ws > 0, (w * tau).sum(0) / np.maximum(ws, 1e-300), tau.mean(0))
    floor = 1e-6 * float(np.median(np.abs(d0))) if d0.size else 0.0  # depths stay positive
    f32 = np.float32
    ts = (tau - d0).astype(f32)
    lo = np.maximum(ts.min(0), f32(floor) - d0.astype(f32))
    hi = np.maximum(ts.max(0), lo)
    x = _solve_pixels(w.astype(f32), ts, rho2.astype(f32), a.astype(f32), lo, hi, np.zeros_like(lo),
                      (rtol * np.abs(d0)).astype(f32), iters)
    d = d0 + x
    dist = np.sqrt(a * (d - tau) ** 2 + rho2)
    return d, dist


def dense_depths(preds: PairPredictions, R, t, focals, sR, T, pp=None, depth=None, iters: int = 60,
                 chunk: int = 16384):
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
    samples = []
    for k in range(n):
        image = _image_predictions(preds, k)
        for c0 in range(0, H * W, chunk):
            sl = slice(c0, min(c0 + chunk, H * W))
            off = pixel_offsets(H, W, pp, np.arange(sl.start, sl.stop))
            v = R[k] @ np.concatenate((off / focals[k], np.ones((1, off.shape[1]))), 0)
            a = (v * v).sum(0)
            w, tau, rho2, eids = _pixel_terms(image, sl, v, a, t[k], sR, T)
            if depth is None:
                d, dist = _depths(w, tau, rho2, a, iters)
            else:
                d = np.asarray(depth[k], np.float64).reshape(-1)[sl]
                dist = np.sqrt(a * (d - tau) ** 2 + rho2)  # [K, C]
            out[k].reshape(-1)[sl] = d
            wd = (w * dist).sum(1)
            np.add.at(edge_loss, eids, wd)
            image_loss[k] += wd.sum()
            sum_dist += float(dist.sum())
            rel_sum = dist.sum(0) / np.maximum(d, 1e-300)
            sum_rel += float(rel_sum.sum())
            count += dist.size
            step = max(1, dist.size * n * -(-H * W // chunk) // 200_000)  # ~2e5 samples for the quantiles
            samples.append((dist[:, ::step] / np.maximum(d[::step], 1e-300)).ravel())
    norm = float(E * H * W)

    rel = np.concatenate(samples) if samples else np.zeros(0)
    q50, q90 = (np.percentile(rel, [50, 90]) if rel.size else (math.nan, math.nan))
    stats = {"loss": float(edge_loss.sum() / norm), "edge_loss": edge_loss / norm, "image_loss": image_loss / norm,
             "mean_dist": sum_dist / max(count, 1), "mean_rel_dist": sum_rel / max(count, 1),
             "median_rel_dist": float(q50), "p90_rel_dist": float(q90)}
    return out, stats


def problem_depths(prob: Problem, st: State, iters: int = 60) -> np.ndarray:
    """Optimal log-depths ``[n, S]`` on ``prob``'s pixels for the cameras and edges of ``st``
    (used to move a solution from a coarse pixel grid to a finer one)."""
    logd = np.empty((prob.n, prob.S))
    ones = np.ones((1, prob.S))
    for k, (eids, X, w) in enumerate(prob.obs):
        v = st.R[k] @ np.concatenate((prob.offsets / np.exp(st.logf[k]), ones), 0)
        a = (v * v).sum(0)
        q = mm(np.exp(st.sig[eids])[:, None, None] * st.Rp[eids], X) + (st.Tp[eids] - st.t[k])[:, :, None]
        b = (q * v[None]).sum(1)
        tau = b / a
        rho2 = np.maximum((q * q).sum(1) - b * tau, 0.0)
        logd[k] = np.log(_depths(w, tau, rho2, a, iters)[0])
    return logd
