"""Spanning-tree + Procrustes initialisation (PnP-free), on a ``Problem``'s sampled pixels.

1. Edge score ``mean(conf1) * mean(conf2)``; maximum spanning tree over the images (Kruskal, best
   direction of each unordered pair).
2. The best tree edge seeds the world with its two pointmaps; every further tree edge (in decreasing
   score, repeatedly until all are placed) is registered onto the placed image's world points by a
   weighted similarity (Umeyama) and places the new image's points.
3. Each camera: focal by the Weiszfeld fit of its best view-1 pointmap; pose by a weighted similarity
   registration of that pointmap onto the image's world points (rotation/translation kept, the scale
   goes into the depth).  An image with no view-1 prediction (non-symmetric graphs) gets its pose by a
   few orthogonal-iteration PnP steps against its world points instead.
4. Known poses/focals: the initial cameras are mapped onto the known ones by one similarity fitted
   on camera centres and axis tips; known poses and focals then replace the estimates.
5. Depth = z of the world points in each camera; every edge's similarity = weighted Procrustes of
   both its pointmaps onto the resulting world points; with fewer than two known poses everything is
   rescaled so that the pair scales have geometric mean ``base_scale`` (the official gauge).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .cameras import F64, camera_points, estimate_focal
from .pairs import max_spanning_tree
from .problem import Problem, State
from .procrustes import weighted_umeyama


def _apply(s, R, t, X):
    return s * (X @ R.T) + t


def _tree_edges(prob: Problem) -> list[int]:
    n = prob.n
    best = {}
    for e, (i, j) in enumerate(prob.edges.tolist()):
        key = (min(i, j), max(i, j))
        if i != j and (key not in best or prob.score[e] > prob.score[best[key]]):
            best[key] = e
    M = np.full((n, n), -np.inf)
    for (i, j), e in best.items():
        M[i, j] = M[j, i] = float(prob.score[e])
    tree = [best[p] for p in max_spanning_tree(M)]
    return sorted(tree, key=lambda e: (-float(prob.score[e]), e))


def _orthogonal_iteration_pnp(P, offsets, focal, R, t, w, iters: int = 30):
    """Camera-to-world (R, t) with ``P ~ R (d * ray) + t`` (object-space error), from a start pose."""
    ray = torch.cat((offsets / focal, torch.ones_like(offsets[:, :1])), -1)
    for _ in range(iters):
        y = (P - t) @ R
        d = ((y * ray).sum(-1) / (ray * ray).sum(-1)).clamp_min(1e-9)
        _, R, t = weighted_umeyama(d[:, None] * ray, P, w, with_scale=False)
    return R, t


def spanning_tree_init(prob: Problem, known_c2w=None, known_pose_mask=None, known_focals=None,
                       base_scale: float = 0.5, size: int | None = None) -> State:
    """Initial ``State`` for ``prob``; see the module docstring."""
    n, E = prob.n, prob.E
    edges = prob.edges.tolist()
    tree = _tree_edges(prob)
    world: list = [None] * n
    if tree:
        e0 = tree[0]
        i, j = edges[e0]
        world[i], world[j] = prob.X1[e0].clone(), prob.X2[e0].clone()
    else:  # single image
        world[0] = prob.X1[0].clone()
    todo = list(tree[1:])
    while todo:
        rest = []
        for e in todo:
            i, j = edges[e]
            if world[i] is not None and world[j] is None:
                sim = weighted_umeyama(prob.X1[e], world[i], prob.w1[e] + 1e-6)
                world[j] = _apply(*sim, prob.X2[e])
            elif world[j] is not None and world[i] is None:
                sim = weighted_umeyama(prob.X2[e], world[j], prob.w2[e] + 1e-6)
                world[i] = _apply(*sim, prob.X1[e])
            elif world[i] is None and world[j] is None:
                rest.append(e)
        if len(rest) == len(todo):
            raise ValueError("pair graph is not connected")
        todo = rest

    size = size or max(prob.H, prob.W)
    R = torch.empty(n, 3, 3, dtype=F64)
    t = torch.empty(n, 3, dtype=F64)
    logf = torch.empty(n, dtype=F64)
    view1 = [[e for e, (i, _) in enumerate(edges) if i == k] for k in range(n)]
    for k in range(n):
        if view1[k]:
            e = max(view1[k], key=lambda e: (float(prob.score[e]), -e))
            f = estimate_focal(prob.X1[e], prob.offsets, prob.w1[e] + 1e-6, clip=(0.5, 3.5), size=size)
            _, R[k], t[k] = weighted_umeyama(prob.X1[e], world[k], prob.w1[e] + 1e-6)
        else:  # only seen as view 2: start from the partner camera frame of its best edge
            e = max((e for e, (_, j) in enumerate(edges) if j == k), key=lambda e: float(prob.score[e]))
            f = size / (2 * math.tan(math.radians(30)))
            _, R0, t0 = weighted_umeyama(prob.X1[e], world[edges[e][0]], prob.w1[e] + 1e-6)
            R[k], t[k] = _orthogonal_iteration_pnp(world[k], prob.offsets, f, R0, t0, prob.w2[e] + 1e-6)
        logf[k] = math.log(f)

    known = torch.zeros(n, dtype=torch.bool)
    if known_c2w is not None:
        Kp = torch.as_tensor(np.asarray(known_c2w, dtype=np.float64))
        known = torch.ones(n, dtype=torch.bool) if known_pose_mask is None else torch.as_tensor(known_pose_mask)
        ks = known.nonzero().flatten()
        if len(ks):
            def anchors(Rs, ts, eps):
                return torch.cat([ts] + [ts + eps * Rs[:, :, a] for a in range(3)])
            scale_here = (t[ks] - t[ks].mean(0)).norm(dim=-1).mean().clamp_min(1e-9)
            scale_known = (Kp[ks, :3, 3] - Kp[ks, :3, 3].mean(0)).norm(dim=-1).mean().clamp_min(1e-9)
            if len(ks) == 1:
                s = torch.ones((), dtype=F64)
                Rg = Kp[ks[0], :3, :3] @ R[ks[0]].T
                tg = Kp[ks[0], :3, 3] - Rg @ t[ks[0]]
            else:
                s, Rg, tg = weighted_umeyama(anchors(R[ks], t[ks], 0.1 * scale_here),
                                             anchors(Kp[ks, :3, :3], Kp[ks, :3, 3], 0.1 * scale_known))
            world = [_apply(s, Rg, tg, X) for X in world]
            R = Rg @ R
            t = _apply(s, Rg, tg, t)
            R[ks] = Kp[ks, :3, :3]
            t[ks] = Kp[ks, :3, 3]
    if known_focals is not None:
        kf = torch.as_tensor(np.asarray(known_focals, dtype=np.float64)).reshape(-1)
        logf = torch.where(torch.isfinite(kf), kf.log(), logf)

    logd = torch.empty(n, prob.S, dtype=F64)
    for k in range(n):
        z = ((world[k] - t[k]) @ R[k])[:, 2]
        pos = z[z > 0]
        floor = pos.median() * 1e-3 if len(pos) else torch.ones((), dtype=F64)
        logd[k] = z.clamp_min(floor).log()
    P = [camera_points(logd[k].exp(), prob.offsets, logf[k].exp()) @ R[k].T + t[k] for k in range(n)]

    sig = torch.empty(E, dtype=F64)
    Rp = torch.empty(E, 3, 3, dtype=F64)
    Tp = torch.empty(E, 3, dtype=F64)
    for e, (i, j) in enumerate(edges):
        s, Rp[e], Tp[e] = weighted_umeyama(torch.cat((prob.X1[e], prob.X2[e])), torch.cat((P[i], P[j])),
                                           torch.cat((prob.w1[e], prob.w2[e])) + 1e-6)
        sig[e] = s.log()
    st = State(R, t, logf, logd, Rp, Tp, sig)
    if int(known.sum()) < 2:
        rescale(st, math.log(base_scale) - float(sig.mean()))
    return st


def rescale(st: State, log_factor: float) -> None:
    """Scale the whole scene (world, depths, pair similarities) by ``exp(log_factor)`` in place."""
    f = math.exp(log_factor)
    st.t *= f
    st.Tp *= f
    st.logd += log_factor
    st.sig += log_factor
