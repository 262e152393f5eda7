"""The alignment problem restricted to a pixel subset, and the parameter state the solvers update.

``Problem`` gathers, for one set of pixel indices shared by every image (all pixels, or a regular
sub-grid for the pose stage), each edge's two pointmaps and log-confidence weights in float64:
memory is ``O(edges x sampled pixels)``.  Per image the observations (every edge side that predicts
that image) are also stored component-major, ``X [K, 3, S]``, which is what the solver streams over.
``State`` holds the unknowns: per image a camera-to-world rotation/centre, a log-focal and log-depths on
the sampled pixels; per edge a similarity ``A = exp(sig) * Rp @ X + Tp``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from distillkit.geometry.cameras import camera_points, pixel_offsets
from distillkit.geometry.predictions import PairPredictions


def mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Matrix product through torch (so ``torch.set_num_threads`` governs every BLAS call here)."""
    return (torch.from_numpy(a) @ torch.from_numpy(b)).numpy()


def grid_index(H: int, W: int, max_pixels: int | None) -> tuple[np.ndarray, int]:
    """Row-major indices of a centred regular sub-grid with at most ``max_pixels`` pixels, and its stride."""
    stride = 1 if not max_pixels or H * W <= max_pixels else math.ceil(math.sqrt(H * W / max_pixels))
    while stride > 1 and len(range(stride // 2, H, stride)) * len(range(stride // 2, W, stride)) > max_pixels:
        stride += 1
    return strided_index(H, W, stride), stride


def strided_index(H: int, W: int, stride: int) -> np.ndarray:
    """Row-major indices of the pixels ``(stride//2 + i*stride, stride//2 + j*stride)`` (all for stride 1)."""
    off = stride // 2 if stride > 1 else 0
    v = np.arange(off, H, stride)
    u = np.arange(off, W, stride)
    return (v[:, None] * W + u[None, :]).reshape(-1)


@dataclass
class Problem:
    H: int
    W: int
    n: int
    edges: np.ndarray  # [E, 2]
    index: np.ndarray  # [S] sampled pixel indices (row-major)
    offsets: np.ndarray  # [2, S] (u - cx, v - cy)
    X1: np.ndarray  # [E, S, 3] view-1 points (frame of view 1)
    X2: np.ndarray  # [E, S, 3] view-2 points (frame of view 1)
    w1: np.ndarray  # [E, S] log-confidence weights
    w2: np.ndarray
    score: np.ndarray  # [E] mean(conf1) * mean(conf2) (spanning-tree score)
    obs: list = field(default_factory=list)  # per image: (edge ids [K], X [K, 3, S], w [K, S])

    @property
    def E(self) -> int:
        return len(self.edges)

    @property
    def S(self) -> int:
        return len(self.index)

    @property
    def norm(self) -> float:
        """Loss normaliser: the official divides each side's sum by ``sum_e H*W``."""
        return float(self.E * self.S)

    @classmethod
    def build(cls, preds: PairPredictions, index: np.ndarray, pp=None) -> "Problem":
        H, W = preds.hw
        E, S = preds.n_edges, len(index)
        X1, X2 = np.empty((E, S, 3)), np.empty((E, S, 3))
        c1, c2 = np.empty((E, S)), np.empty((E, S))
        for e in range(E):  # one edge at a time: inputs may be memory-mapped
            X1[e] = np.asarray(preds.pts1[e]).reshape(H * W, 3)[index]
            X2[e] = np.asarray(preds.pts2[e]).reshape(H * W, 3)[index]
            c1[e] = np.asarray(preds.conf1[e]).reshape(H * W)[index]
            c2[e] = np.asarray(preds.conf2[e]).reshape(H * W)[index]
        prob = cls(H, W, preds.n_images, preds.edges.copy(), np.asarray(index), pixel_offsets(H, W, pp, index),
                   X1, X2, np.log(np.maximum(c1, 1.0)), np.log(np.maximum(c2, 1.0)), c1.mean(1) * c2.mean(1))
        for k in range(prob.n):
            ob = preds.observations(k)
            eids = np.array([e for e, _ in ob], dtype=np.int64)
            X = np.stack([(X1 if s == 1 else X2)[e].T for e, s in ob])
            w = np.stack([(prob.w1 if s == 1 else prob.w2)[e] for e, s in ob])
            prob.obs.append((eids, X, w))
        return prob


@dataclass
class State:
    R: np.ndarray  # [n, 3, 3] camera-to-world rotations
    t: np.ndarray  # [n, 3] camera centres
    logf: np.ndarray  # [n]
    logd: np.ndarray  # [n, S]
    Rp: np.ndarray  # [E, 3, 3] pair rotations
    Tp: np.ndarray  # [E, 3] pair translations
    sig: np.ndarray  # [E] pair log-scales

    def clone(self) -> "State":
        return replace(self, **{k: v.copy() for k, v in self.__dict__.items()})

    def cam_points(self, offsets: np.ndarray, k: int) -> np.ndarray:
        return camera_points(np.exp(self.logd[k]), offsets, math.exp(self.logf[k]))

    def world_points(self, offsets: np.ndarray, k: int) -> np.ndarray:
        """``[3, S]`` world points of image ``k``."""
        return self.R[k] @ self.cam_points(offsets, k) + self.t[k][:, None]

    def aligned(self, eids: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Pair similarities applied to stacked predictions ``X [K, 3, S]`` of edges ``eids``."""
        sR = np.exp(self.sig[eids])[:, None, None] * self.Rp[eids]
        return mm(sR, X) + self.Tp[eids][:, :, None]


def residual_norms(prob: Problem, st: State, k: int) -> np.ndarray:
    """``[K, S]`` distances between image ``k``'s world points and its aligned predictions."""
    eids, X, _ = prob.obs[k]
    r = st.world_points(prob.offsets, k)[None] - st.aligned(eids, X)
    return np.sqrt((r * r).sum(1))


def weighted_loss(prob: Problem, st: State, per_edge: bool = False):
    """Official objective on the sampled pixels: ``sum w * ||P - A|| / (E * S)`` over both sides."""
    total = 0.0
    edge_sum = np.zeros(prob.E)
    for k, (eids, _, w) in enumerate(prob.obs):
        s = (w * residual_norms(prob, st, k)).sum(1)
        total += s.sum()
        if per_edge:
            np.add.at(edge_sum, eids, s)
    if per_edge:
        return total / prob.norm, edge_sum / prob.norm
    return total / prob.norm
