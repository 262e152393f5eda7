"""Fine stage: Gauss-Newton steps on **every pixel**, depths still eliminated, streamed image by image.

The pose stage solves the objective on a pixel sub-grid; its optimum differs from the full-resolution one
by the sampling noise of the predictions (on 192x256 images with 4096 of 49152 pixels: 3x the rotation
error of the exact optimum, 2e-4 of depth).  Storing a full-resolution ``Problem`` for the joint solver
costs ``O(edges x H x W)`` float64 (GBs at 384x512) and 6x the time, so instead each step here:

1. builds the reduced ``7 (cameras + edges)`` Gauss-Newton system directly from the predictions, one image
   and one pixel chunk at a time (the per-pixel depth blocks are diagonal, so their Schur complement is a
   sum over chunks: nothing per pixel is kept), linearised at the current full-resolution depths, which
   are optimal for the current cameras (the dense stage), so the depth gradient is ~0;
2. solves it (Levenberg-Marquardt damping on the reduced unknowns, the same gauge handling as the pose
   stage) and re-solves every depth exactly for the candidate cameras/edges (``dense_depths``: variable
   projection, which is never worse than back-substituting the linearised depth step), accepting the
   candidate if the full-resolution loss went down.

The model uses the exact Hessian of the norm (``beta = 1``): near the optimum it does not overshoot, and
convergence is quadratic, so from the sub-grid optimum one step lands within ~1e-6 of depth of the exact
optimum (a step that lowers the loss by less than ``tol`` relative is the last).  Memory stays that of
the dense stage (``O(observations of one image x chunk)``) plus the reduced system (``system.py``: sparse
for large scenes).
"""

from __future__ import annotations

import numpy as np

from distillkit.geometry.cameras import camera_points, pixel_offsets
from distillkit.geometry.dense import dense_depths
from distillkit.geometry.predictions import PairPredictions
from distillkit.geometry.problem import State, mm
from distillkit.geometry.solver import Freedom, _linearise_chunk, _update, index_map, local_block
from distillkit.geometry.system import ReducedSystem


def _image_inputs(preds: PairPredictions, ob):
    """Every prediction of one image, read once (edge arrays may be lazy): ``X [K, H*W, 3]``, ``w [K, H*W]``."""
    H, W = preds.hw
    X = np.stack([np.asarray(preds.points(e, s)).reshape(H * W, 3) for e, s in ob])
    c = np.stack([np.asarray(preds.conf(e, s)).reshape(H * W) for e, s in ob])
    return X, np.log(np.maximum(c, 1.0))


def reduced_system(preds: PairPredictions, st: State, depth: np.ndarray, fr: Freedom, pp, beta: float,
                   chunk: int = 4096):
    """Full-resolution reduced Gauss-Newton system (``ReducedSystem``) and the slot maps ``cam``, ``pair`` at
    ``st`` (cameras and edges) and ``depth [n, H*W]`` (the per-pixel depths eliminated by their Schur
    complement, which is a sum over pixels: accumulated chunk by chunk)."""
    Hh, Ww = preds.hw
    n, E = preds.n_images, preds.n_edges
    cam, pair, N = index_map(n, E, fr)
    system = ReducedSystem(N)
    eps = 1e-12 * float(np.median(depth))
    for k in range(n):
        ob = preds.observations(k)
        eids = np.array([e for e, _ in ob], dtype=np.int64)
        K = len(eids)
        idx = np.concatenate((cam[k], pair[eids].reshape(-1)))
        sR = np.exp(st.sig[eids])[:, None, None] * st.Rp[eids]
        f = float(np.exp(st.logf[k]))
        Xk, wk = _image_inputs(preds, ob)
        loc = np.zeros((7 + 7 * K, 7 + 7 * K))
        gloc = np.zeros(7 + 7 * K)
        fill = np.zeros((7 + 7 * K, 7 + 7 * K), np.float32)
        for c0 in range(0, Hh * Ww, chunk):
            sl = slice(c0, min(c0 + chunk, Hh * Ww))
            X = Xk[:, sl].transpose(0, 2, 1).astype(np.float64)
            off = pixel_offsets(Hh, Ww, pp, np.arange(sl.start, sl.stop))
            x = camera_points(depth[k, sl].astype(np.float64), off, f)
            Mcc, Mca, Maa, gc, ga, Bt, h, gl = _linearise_chunk(st, k, eids, sR, X, wk[:, sl], x, beta, eps)
            loc += local_block(Mcc, Mca, Maa)
            gloc[:7] += gc
            gloc[7:] += ga.reshape(-1)
            hd = h + 1e-12 * h.mean() + 1e-300
            Bs = Bt / hd
            fill += mm(Bs.astype(np.float32), Bt.astype(np.float32).T)  # a model term: float32 is plenty
            gloc -= Bs @ gl
        system.add(idx, loc - fill, gloc)
    return system, cam, pair


def refine_full(preds: PairPredictions, st: State, depth: np.ndarray, stats: dict, fr: Freedom, pp=None,
                beta: float = 0.5, max_iters: int = 3, tol: float = 1e-7, dense_iters: int = 60,
                chunk: int = 16384, log=None):
    """Full-resolution steps from ``st`` (cameras/edges; ``st.logd`` unused) and its optimal ``depth
    [n, H, W]`` with their ``stats`` (``dense_depths``).  Returns ``(state, depth, stats, iterations,
    loss_history)``; the state's ``logd`` is left as given."""
    n = preds.n_images
    loss = stats["loss"]
    history = [loss]
    lam = 1e-6
    it = 0
    for it in range(1, max_iters + 1):
        system, cam, pair = reduced_system(preds, st, depth.reshape(n, -1), fr, pp, beta)
        while True:
            dy = system.solve(lam, pair[:, 6], fr.norm_scale)
            if dy is not None and np.isfinite(dy).all():
                cand = _update(st, cam, pair, dy, 0.0)
                sR = np.exp(cand.sig)[:, None, None] * cand.Rp
                d_new, s_new = dense_depths(preds, cand.R, cand.t, np.exp(cand.logf), sR, cand.Tp, pp, None,
                                            dense_iters, chunk)
                if s_new["loss"] <= loss:
                    break
            lam = max(lam * 10, 1e-8)
            if lam > 1e4:
                return st, depth, stats, it - 1, history
        rel = (loss - s_new["loss"]) / max(loss, 1e-300)
        st, depth, stats, loss = cand, d_new, s_new, s_new["loss"]
        history.append(loss)
        lam = max(lam / 3, 1e-9)
        if log:
            log(f"fine it {it}: loss {loss:.10g} rel {rel:.2g} lam {lam:.2g} step {np.abs(dy).max():.2g}", st)
        if rel < tol:
            break
    return st, depth, stats, it, history
