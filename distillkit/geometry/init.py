"""Spanning-tree + Procrustes initialisation (PnP-free), on a ``Problem``'s sampled pixels.

1. Edge score ``mean(conf1) * mean(conf2)``; maximum spanning tree over the images (Kruskal on the best
   direction of each unordered pair).
2. The best tree edge seeds the world with its two pointmaps; every further tree edge (in decreasing
   score, repeatedly until all are placed) is registered onto the placed image's world points by a
   weighted similarity (Umeyama) and places the new image's points.
3. Each camera: focal from the Weiszfeld fit of its best view-1 pointmap; pose from a weighted
   similarity registration of that pointmap onto the image's world points (rotation and translation
   kept, the scale goes into the depth).  An image that is never view 1 (non-symmetric graphs) gets
   its pose and focal from a PnP of its world points instead (weighted DLT + RQ, refined by a few
   object-space orthogonal iterations; no RANSAC).
4. Known poses: the initial cameras are mapped onto the known ones by one similarity fitted on camera
   centres and axis tips; known poses and focals then replace the estimates.
5. Depth = z of the world points in each camera; every edge's similarity = weighted Procrustes of
   both its pointmaps onto the resulting world points; with fewer than two known poses everything is
   rescaled so that the pair scales have geometric mean ``base_scale`` (the official gauge).
The official init also runs RANSAC-PnP for some cameras; the optimum does not depend on it.
"""

from __future__ import annotations

import math

import numpy as np

from distillkit.geometry.cameras import camera_points, estimate_focal, focal_base
from distillkit.geometry.pairs import max_spanning_tree
from distillkit.geometry.problem import Problem, State
from distillkit.geometry.procrustes import apply_similarity, weighted_umeyama


def tree_edges(prob: Problem) -> list[int]:
    """Edge ids of a maximum spanning tree (best direction per unordered pair), best score first."""
    best: dict = {}
    for e, (i, j) in enumerate(prob.edges.tolist()):
        key = (min(i, j), max(i, j))
        if i != j and (key not in best or prob.score[e] > prob.score[best[key]]):
            best[key] = e
    M = np.full((prob.n, prob.n), -np.inf)
    for (i, j), e in best.items():
        M[i, j] = M[j, i] = prob.score[e]
    return sorted((best[p] for p in max_spanning_tree(M)), key=lambda e: (-prob.score[e], e))


def _rq(M):
    """``M = K @ Q`` with ``K`` upper triangular (positive diagonal) and ``Q`` orthogonal."""
    Q, R = np.linalg.qr(np.flipud(M).T)
    K = np.flipud(R.T)[:, ::-1]
    Q = np.flipud(Q.T)
    D = np.diag(np.sign(np.diag(K)) + (np.diag(K) == 0))
    return K @ D, D @ Q


def _pnp_dlt(P, offsets, w, max_points: int = 4096):
    """Camera-to-world ``(R, t)`` and focal from world points ``P [S, 3]`` seen at pixel offsets ``[2, S]``
    (weighted, Hartley-normalised direct linear transform, then RQ decomposition)."""
    keep = np.flatnonzero(w > 0)
    if len(keep) > max_points:
        keep = keep[np.linspace(0, len(keep) - 1, max_points).astype(int)]
    X, x, ww = P[keep], offsets[:, keep].T, np.sqrt(w[keep])
    cX, cx = X.mean(0), x.mean(0)
    sX = np.sqrt(3) / max(np.linalg.norm(X - cX, axis=1).mean(), 1e-12)
    sx = np.sqrt(2) / max(np.linalg.norm(x - cx, axis=1).mean(), 1e-12)
    Xh = np.concatenate(((X - cX) * sX, np.ones((len(X), 1))), 1)
    xn = (x - cx) * sx
    A = np.zeros((2 * len(X), 12))
    A[0::2, 0:4], A[0::2, 8:12] = Xh, -xn[:, :1] * Xh
    A[1::2, 4:8], A[1::2, 8:12] = Xh, -xn[:, 1:2] * Xh
    A *= np.repeat(ww, 2)[:, None]
    Pn = np.linalg.svd(A, full_matrices=False)[2][-1].reshape(3, 4)
    T3 = np.diag([sX, sX, sX, 1.0])
    T3[:3, 3] = -sX * cX
    T2inv = np.diag([1 / sx, 1 / sx, 1.0])
    T2inv[:2, 2] = cx
    Pm = T2inv @ Pn @ T3
    if np.median(np.concatenate((P[keep], np.ones((len(keep), 1))), 1) @ Pm[2]) < 0:
        Pm = -Pm
    K, Rw2c = _rq(Pm[:, :3])
    if np.linalg.det(Rw2c) < 0:
        Rw2c = -Rw2c
        K = -K
    centre = -np.linalg.solve(Pm[:, :3], Pm[:, 3])
    f = abs(K[0, 0] + K[1, 1]) / 2 / max(abs(K[2, 2]), 1e-300)
    return Rw2c.T, centre, f


def _pnp_orthogonal_iteration(P, offsets, focal, R, t, w, iters: int = 20):
    """Refine camera-to-world ``(R, t)`` with ``P ~ R (d * ray) + t`` (object-space error)."""
    ray = np.concatenate((offsets / focal, np.ones((1, offsets.shape[1]))), 0).T  # [S, 3]
    for _ in range(iters):
        y = (P - t) @ R
        d = np.maximum((y * ray).sum(-1) / (ray * ray).sum(-1), 1e-9)
        _, R, t = weighted_umeyama(d[:, None] * ray, P, w, with_scale=False)
    return R, t


def place_world_points(prob: Problem) -> list:
    """World pointmaps ``[S, 3]`` of every image chained along the spanning tree."""
    edges = prob.edges.tolist()
    tree = tree_edges(prob)
    world: list = [None] * prob.n
    if not tree:  # a single image
        world[0] = prob.X1[0].copy()
        return world
    i, j = edges[tree[0]]
    world[i], world[j] = prob.X1[tree[0]].copy(), prob.X2[tree[0]].copy()
    todo = tree[1:]
    while todo:
        rest = []
        for e in todo:
            i, j = edges[e]
            if world[i] is not None and world[j] is None:
                world[j] = apply_similarity(*weighted_umeyama(prob.X1[e], world[i], prob.w1[e] + 1e-6), prob.X2[e])
            elif world[j] is not None and world[i] is None:
                world[i] = apply_similarity(*weighted_umeyama(prob.X2[e], world[j], prob.w2[e] + 1e-6), prob.X1[e])
            elif world[i] is None:
                rest.append(e)
        if len(rest) == len(todo):
            raise ValueError("the pair graph is not connected")
        todo = rest
    return world


def spanning_tree_init(prob: Problem, known_c2w=None, known_pose_mask=None, known_focals=None,
                       base_scale: float = 0.5) -> State:
    """Initial ``State`` for ``prob``; see the module docstring."""
    n, E = prob.n, prob.E
    edges = prob.edges.tolist()
    world = place_world_points(prob)
    size = max(prob.H, prob.W)
    R, t, logf = np.empty((n, 3, 3)), np.empty((n, 3)), np.empty(n)
    for k in range(n):
        v1 = [e for e, (i, _) in enumerate(edges) if i == k]
        if v1:
            e = max(v1, key=lambda e: (prob.score[e], -e))
            f = estimate_focal(prob.X1[e], prob.offsets, prob.w1[e] + 1e-6, size=size)
            _, R[k], t[k] = weighted_umeyama(prob.X1[e], world[k], prob.w1[e] + 1e-6)
        else:  # only ever view 2: PnP (DLT, then object-space refinement) against its world points
            e = max((e for e, (_, j) in enumerate(edges) if j == k), key=lambda e: prob.score[e])
            R0, t0, f = _pnp_dlt(world[k], prob.offsets, prob.w2[e] + 1e-6)
            if not (np.isfinite(f) and 0.2 * focal_base(size) < f < 10 * focal_base(size)):
                f = focal_base(size)
            R[k], t[k] = _pnp_orthogonal_iteration(world[k], prob.offsets, f, R0, t0, prob.w2[e] + 1e-6)
        logf[k] = math.log(f)

    known = np.zeros(n, bool)
    if known_c2w is not None:
        Kp = np.asarray(known_c2w, dtype=np.float64)
        known = np.ones(n, bool) if known_pose_mask is None else np.asarray(known_pose_mask, bool)
        ks = np.flatnonzero(known)
        if len(ks) == 1:
            s, Rg = 1.0, Kp[ks[0], :3, :3] @ R[ks[0]].T
            tg = Kp[ks[0], :3, 3] - Rg @ t[ks[0]]
        elif len(ks) > 1:
            def anchors(Rs, ts):
                eps = 0.1 * max(float(np.linalg.norm(ts - ts.mean(0), axis=1).mean()), 1e-9)
                return np.concatenate([ts] + [ts + eps * Rs[:, :, a] for a in range(3)])
            s, Rg, tg = weighted_umeyama(anchors(R[ks], t[ks]), anchors(Kp[ks, :3, :3], Kp[ks, :3, 3]))
        if len(ks):
            world = [apply_similarity(s, Rg, tg, X) for X in world]
            R, t = Rg @ R, apply_similarity(s, Rg, tg, t)
            R[ks], t[ks] = Kp[ks, :3, :3], Kp[ks, :3, 3]
    if known_focals is not None:
        kf = np.asarray(known_focals, dtype=np.float64).reshape(-1)
        logf = np.where(np.isfinite(kf) & (kf > 0), np.log(np.abs(kf)), logf)

    logd = np.empty((n, prob.S))
    for k in range(n):
        z = ((world[k] - t[k]) @ R[k])[:, 2]
        pos = z[z > 0]
        logd[k] = np.log(np.maximum(z, np.median(pos) * 1e-3 if len(pos) else 1.0))
    P = [(R[k] @ camera_points(np.exp(logd[k]), prob.offsets, math.exp(logf[k]))).T + t[k] for k in range(n)]
    sig, Rp, Tp = np.empty(E), np.empty((E, 3, 3)), np.empty((E, 3))
    for e, (i, j) in enumerate(edges):
        s, Rp[e], Tp[e] = weighted_umeyama(np.concatenate((prob.X1[e], prob.X2[e])), np.concatenate((P[i], P[j])),
                                           np.concatenate((prob.w1[e], prob.w2[e])) + 1e-6)
        sig[e] = math.log(s)
    st = State(R, t, logf, logd, Rp, Tp, sig)
    if known.sum() < 2:
        centre = t[np.flatnonzero(known)[0]] if known.any() else np.zeros(3)
        rescale(st, math.log(base_scale) - float(sig.mean()), centre)
    return st


def rescale(st: State, log_factor: float, centre=None) -> None:
    """Scale the whole scene (world, depths, pair similarities) by ``exp(log_factor)`` about ``centre``."""
    f = math.exp(log_factor)
    c = np.zeros(3) if centre is None else np.asarray(centre, np.float64)
    st.t[:] = c + f * (st.t - c)
    st.Tp[:] = c + f * (st.Tp - c)
    st.logd += log_factor
    st.sig += log_factor
