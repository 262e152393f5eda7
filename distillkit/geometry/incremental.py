"""Incremental alignment: add frames to an aligned scene, starting from its cameras, depths and pair similarities.

Convention: the enlarged scene's images ``0..m-1`` are the previous scene's images (same order), the new
frames come after them, and an edge ``(i, j)`` that the previous alignment had keeps its similarity.
``Previous`` holds what the store keeps of an alignment; ``incremental_init`` builds the solver's initial
``State`` from it: old images keep their cameras and depths, each new image is placed from an already placed
neighbour through their pair (weighted similarity, best-scoring pairs first, as the spanning-tree init does),
its focal and pose come from its own view-1 pointmap, new edges get their Procrustes similarity and the
whole scene is rescaled to the official gauge.  The solver then only has to absorb the new pairs, which
takes a few iterations instead of a full solve; the optimum is the same as from scratch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from distillkit.geometry.cameras import camera_points, estimate_focal
from distillkit.geometry.init import rescale
from distillkit.geometry.problem import Problem, State
from distillkit.geometry.procrustes import apply_similarity, weighted_umeyama


@dataclass
class Previous:
    cam2world: np.ndarray  # [m, 4, 4]
    focals: np.ndarray  # [m]
    depth: np.ndarray  # [m, H, W]
    edges: np.ndarray | None = None  # [E0, 2] edges of the previous alignment ...
    pw_poses: np.ndarray | None = None  # [E0, 4, 4] ... their similarities (scale folded into the top rows)

    @classmethod
    def from_result(cls, res) -> "Previous":
        return cls(res.cam2world, res.focals, res.depth, res.edges, res.pw_poses)

    @property
    def m(self) -> int:
        return len(self.cam2world)


def _split_similarity(M: np.ndarray):
    A = M[:3, :3]
    s = float(np.cbrt(np.linalg.det(A)))
    return s, A / s, M[:3, 3]


def incremental_init(prob: Problem, prev: Previous, base_scale: float = 0.5, norm_scale: bool = True) -> State:
    """Initial ``State`` on ``prob``'s pixels from a previous alignment of its first ``prev.m`` images."""
    n, E, m = prob.n, prob.E, prev.m
    if m > n:
        raise ValueError(f"the previous alignment has {m} images, the scene only {n}")
    H, W = prob.H, prob.W
    if prev.depth.shape[1:] != (H, W):
        raise ValueError(f"the previous alignment is {prev.depth.shape[1:]}, the pairs are {(H, W)}")
    edges = prob.edges.tolist()
    R, t, logf = np.empty((n, 3, 3)), np.empty((n, 3)), np.empty(n)
    logd = np.empty((n, prob.S))
    world: list = [None] * n
    for k in range(m):
        R[k], t[k] = prev.cam2world[k, :3, :3], prev.cam2world[k, :3, 3]
        logf[k] = math.log(float(prev.focals[k]))
        d = np.asarray(prev.depth[k], np.float64).reshape(-1)[prob.index]
        logd[k] = np.log(np.maximum(d, 1e-12))
        world[k] = (R[k] @ camera_points(np.exp(logd[k]), prob.offsets, math.exp(logf[k]))).T + t[k]
    order = sorted(range(E), key=lambda e: (-prob.score[e], e))
    placed = True
    while placed and any(w is None for w in world):
        placed = False
        for e in order:
            i, j = edges[e]
            if world[i] is not None and world[j] is None:
                world[j] = apply_similarity(*weighted_umeyama(prob.X1[e], world[i], prob.w1[e] + 1e-6), prob.X2[e])
                placed = True
            elif world[j] is not None and world[i] is None:
                world[i] = apply_similarity(*weighted_umeyama(prob.X2[e], world[j], prob.w2[e] + 1e-6), prob.X1[e])
                placed = True
    if any(w is None for w in world):
        raise ValueError("new frames without a pair to the aligned ones: the pair graph is not connected")
    size = max(H, W)
    for k in range(m, n):
        v1 = [e for e, (i, _) in enumerate(edges) if i == k]
        if v1:
            e = max(v1, key=lambda e: (prob.score[e], -e))
            f = estimate_focal(prob.X1[e], prob.offsets, prob.w1[e] + 1e-6, size=size)
            _, R[k], t[k] = weighted_umeyama(prob.X1[e], world[k], prob.w1[e] + 1e-6)
        else:  # only ever view 2: look along the mean focal of the old cameras, posed by its neighbour's frame
            e = max((e for e, (_, j) in enumerate(edges) if j == k), key=lambda e: prob.score[e])
            f = float(np.exp(logf[:m].mean()))
            s, R[k], t[k] = weighted_umeyama(prob.X2[e], world[k], prob.w2[e] + 1e-6)
        logf[k] = math.log(f)
        z = ((world[k] - t[k]) @ R[k])[:, 2]
        pos = z[z > 0]
        logd[k] = np.log(np.maximum(z, np.median(pos) * 1e-3 if len(pos) else 1.0))
    old = {}
    if prev.edges is not None and prev.pw_poses is not None:
        old = {(int(i), int(j)): M for (i, j), M in zip(np.asarray(prev.edges).tolist(), prev.pw_poses)}
    P = [(R[k] @ camera_points(np.exp(logd[k]), prob.offsets, math.exp(logf[k]))).T + t[k] for k in range(n)]
    sig, Rp, Tp = np.empty(E), np.empty((E, 3, 3)), np.empty((E, 3))
    for e, (i, j) in enumerate(edges):
        if (i, j) in old:
            s, Rp[e], Tp[e] = _split_similarity(np.asarray(old[(i, j)], np.float64))
        else:
            s, Rp[e], Tp[e] = weighted_umeyama(np.concatenate((prob.X1[e], prob.X2[e])), np.concatenate((P[i], P[j])),
                                               np.concatenate((prob.w1[e], prob.w2[e])) + 1e-6)
        sig[e] = math.log(s)
    st = State(R, t, logf, logd, Rp, Tp, sig)
    if norm_scale:
        rescale(st, math.log(base_scale) - float(sig.mean()), t[0].copy())
    return st
