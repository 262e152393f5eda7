"""The alignment problem restricted to a pixel subset, and the parameter state the solvers update.

``Problem`` gathers, for one set of pixel indices shared by every image (all pixels, or a regular
sub-grid for the pose stage), each edge's two pointmaps and log-confidence weights as float64 tensors:
memory is ``O(edges x sampled pixels)``.  ``State`` holds the unknowns: per image a camera-to-world
rotation/translation, a log-focal and log-depths on the sampled pixels; per edge a similarity
``A = exp(sig) * R @ X + T``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .cameras import F64, camera_points, pixel_offsets
from .predictions import PairPredictions


def grid_index(H: int, W: int, max_pixels: int | None) -> tuple[torch.Tensor, int]:
    """Row-major indices of a centred regular sub-grid with at most ``max_pixels`` pixels, and its stride."""
    stride = 1 if not max_pixels or H * W <= max_pixels else math.ceil(math.sqrt(H * W / max_pixels))
    while (len(range(stride // 2, H, stride)) * len(range(stride // 2, W, stride)) > (max_pixels or H * W)):
        stride += 1
    v = torch.arange(stride // 2, H, stride) if stride > 1 else torch.arange(H)
    u = torch.arange(stride // 2, W, stride) if stride > 1 else torch.arange(W)
    return (v[:, None] * W + u[None, :]).reshape(-1), stride


@dataclass
class Problem:
    H: int
    W: int
    n: int
    edges: torch.Tensor  # [E, 2]
    index: torch.Tensor  # [S] sampled pixel indices (row-major)
    offsets: torch.Tensor  # [S, 2] (u - cx, v - cy)
    X1: torch.Tensor  # [E, S, 3] view-1 points (frame of view 1)
    X2: torch.Tensor  # [E, S, 3] view-2 points (frame of view 1)
    w1: torch.Tensor  # [E, S] log-confidence weights
    w2: torch.Tensor
    score: torch.Tensor  # [E] mean(conf1) * mean(conf2) (spanning-tree score)
    obs: list = field(default_factory=list)  # per image: (edge ids [K], X [K,S,3], w [K,S])

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
    def build(cls, preds: PairPredictions, index: torch.Tensor, pp=None) -> "Problem":
        H, W = preds.hw
        idx = index.numpy()
        E = preds.n_edges
        S = len(idx)

        def gather(a, ch):
            out = np.empty((E, S, ch) if ch else (E, S), np.float64)
            for e in range(E):
                flat = np.asarray(a[e]).reshape(H * W, -1) if ch else np.asarray(a[e]).reshape(H * W)
                out[e] = flat[idx]
            return torch.from_numpy(out)

        c1, c2 = gather(preds.conf1, 0), gather(preds.conf2, 0)
        prob = cls(H, W, preds.n_images, torch.from_numpy(preds.edges.copy()), index, pixel_offsets(H, W, pp, index),
                   gather(preds.pts1, 3), gather(preds.pts2, 3), c1.clamp_min(1.0).log(), c2.clamp_min(1.0).log(),
                   c1.mean(1) * c2.mean(1))
        for k in range(prob.n):
            ob = preds.observations(k)
            eids = torch.tensor([e for e, _ in ob], dtype=torch.long)
            X = torch.stack([prob.X1[e] if s == 1 else prob.X2[e] for e, s in ob])
            w = torch.stack([prob.w1[e] if s == 1 else prob.w2[e] for e, s in ob])
            prob.obs.append((eids, X, w))
        return prob


@dataclass
class State:
    R: torch.Tensor  # [n, 3, 3] camera-to-world rotations
    t: torch.Tensor  # [n, 3] camera centres
    logf: torch.Tensor  # [n]
    logd: torch.Tensor  # [n, S]
    Rp: torch.Tensor  # [E, 3, 3] pair rotations
    Tp: torch.Tensor  # [E, 3] pair translations
    sig: torch.Tensor  # [E] pair log-scales

    def clone(self) -> "State":
        return replace(self, **{k: v.clone() for k, v in self.__dict__.items()})

    def cam_points(self, prob: Problem, k: int) -> torch.Tensor:
        return camera_points(self.logd[k].exp(), prob.offsets, self.logf[k].exp())

    def world_points(self, prob: Problem, k: int) -> torch.Tensor:
        return self.cam_points(prob, k) @ self.R[k].T + self.t[k]

    def aligned(self, eids: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """Pair similarities applied to stacked predictions ``X [K, S, 3]`` of edges ``eids``."""
        Y = self.sig[eids].exp()[:, None, None] * (X @ self.Rp[eids].transpose(1, 2))
        return Y + self.Tp[eids][:, None, :]


def weighted_loss(prob: Problem, st: State, per_edge: bool = False):
    """Official objective on the sampled pixels: ``sum w * ||P - A|| / (E * S)`` (both sides)."""
    total = torch.zeros((), dtype=F64)
    edge_sum = torch.zeros(prob.E, dtype=F64)
    for k, (eids, X, w) in enumerate(prob.obs):
        P = st.world_points(prob, k)
        r = (P[None] - st.aligned(eids, X)).norm(dim=-1)
        s = (w * r).sum(1)
        total = total + s.sum()
        if per_edge:
            edge_sum.index_add_(0, eids, s)
    if per_edge:
        return float(total) / prob.norm, edge_sum / prob.norm
    return float(total) / prob.norm
