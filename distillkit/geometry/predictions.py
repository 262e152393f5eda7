"""Container for pairwise pointmap predictions in DUSt3R's layout (one entry per directed edge)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class PairPredictions:
    """Pairwise predictions: for edge ``e = (i, j)``, ``pts1[e]`` are view ``i``'s pixels in camera ``i``'s
    frame and ``pts2[e]`` view ``j``'s pixels in camera ``i``'s frame (one unknown scale per edge);
    ``conf1`` / ``conf2`` their confidences (>= 1).  Arrays are kept as given (float32 numpy or memmaps)
    and read one edge at a time by the aligner.
    """

    edges: np.ndarray  # [E, 2] int
    pts1: np.ndarray  # [E, H, W, 3]
    pts2: np.ndarray  # [E, H, W, 3]
    conf1: np.ndarray  # [E, H, W]
    conf2: np.ndarray  # [E, H, W]

    def __post_init__(self):
        self.edges = np.asarray(self.edges, dtype=np.int64).reshape(-1, 2)
        E = len(self.edges)
        for name in ("pts1", "pts2"):
            a = getattr(self, name)
            if a.ndim != 4 or a.shape[0] != E or a.shape[-1] != 3:
                raise ValueError(f"{name} must be [E, H, W, 3] with E = {E}, got {a.shape}")
        for name in ("conf1", "conf2"):
            if getattr(self, name).shape != self.pts1.shape[:3]:
                raise ValueError(f"{name} must be {self.pts1.shape[:3]}")
        if self.pts2.shape != self.pts1.shape:
            raise ValueError("pts1 and pts2 must have the same shape")
        if E == 0:
            raise ValueError("no pairs: global alignment needs at least two frames and one pair between them")
        used = np.unique(self.edges)
        if used.size == 0 or used[0] != 0 or used[-1] != used.size - 1:
            raise ValueError("edges must use every image index 0..n-1")

    @property
    def n_images(self) -> int:
        return int(self.edges.max()) + 1

    @property
    def n_edges(self) -> int:
        return len(self.edges)

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.pts1.shape[1]), int(self.pts1.shape[2])

    def observations(self, n: int) -> list[tuple[int, int]]:
        """``(edge, side)`` of every prediction of image ``n`` (side 1 = view 1 of the edge), in edge order."""
        out = []
        for e, (i, j) in enumerate(self.edges.tolist()):
            if i == n:
                out.append((e, 1))
            if j == n:
                out.append((e, 2))
        return out

    def points(self, e: int, side: int) -> np.ndarray:
        return self.pts1[e] if side == 1 else self.pts2[e]

    def conf(self, e: int, side: int) -> np.ndarray:
        return self.conf1[e] if side == 1 else self.conf2[e]

    @classmethod
    def from_mapping(cls, d) -> "PairPredictions":
        """From a dict / ``np.load`` result with the fixture keys (``edges``, ``pred1_pts3d``,
        ``pred2_pts3d_in_other_view``, ``pred1_conf``, ``pred2_conf``)."""
        return cls(np.asarray(d["edges"]), np.asarray(d["pred1_pts3d"]), np.asarray(d["pred2_pts3d_in_other_view"]),
                   np.asarray(d["pred1_conf"]), np.asarray(d["pred2_conf"]))

    @classmethod
    def from_npz(cls, path) -> "PairPredictions":
        with np.load(path) as d:
            return cls.from_mapping(d)
