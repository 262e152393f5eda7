"""Pair graphs for pairwise 3-D teachers (DUSt3R-style ``make_pairs``) and overlap/retrieval selection.

All functions return ``int64`` arrays ``[P, 2]`` of directed pairs ``(i, j)`` (view 1 = i, view 2 = j)
in a **deterministic order**:

* ``complete``: ``(i, j)`` for ``i = 1..n-1``, ``j = 0..i-1`` -> (1,0), (2,0), (2,1), (3,0), ... (the
  official order; the ``ga_scene6`` fixture uses it).
* ``oneref-R``: ``(R, j)`` for ``j = 0..n-1``, ``j != R`` (official order).
* ``swin-K`` / ``logwin-K`` / score-based selections: unordered pairs written ``(i, j)`` with ``i < j``,
  sorted lexicographically.  (The official code collects these in a Python ``set``, whose iteration
  order is an implementation detail; sorting makes ours reproducible.)  Windows wrap around
  (cyclic) unless the name ends with ``-noncyclic``; self-pairs that a wrap would create are dropped.
* ``symmetrize=True`` appends every pair reversed, in the same order: ``P + [(j, i) for (i, j) in P]``.
* ``prefilter='seqN'`` / ``'cycN'`` drops pairs more than ``N`` indices apart (cyclic distance for
  ``cyc``), applied before symmetrisation.
"""

from __future__ import annotations

import numpy as np


def _sorted_unordered(pairs) -> list[tuple[int, int]]:
    return sorted({(min(i, j), max(i, j)) for i, j in pairs if i != j})


def _window_name(graph: str, default: int) -> tuple[int, bool]:
    parts = graph.split("-")
    cyclic = parts[-1] != "noncyclic"
    k = default
    if len(parts) > 1 and parts[1].isdigit():
        k = int(parts[1])
    return k, cyclic


def make_pairs(n: int, graph: str = "complete", symmetrize: bool = True, prefilter: str | None = None) -> np.ndarray:
    """Directed pairs over ``n`` images for ``graph`` in ``complete``, ``swin-K[-noncyclic]``,
    ``logwin-K[-noncyclic]``, ``oneref-R`` (K defaults to 3, R to 0).  See the module docstring for the order.
    """
    if n < 1:
        raise ValueError("need at least one image")
    if n == 1:  # the official demo duplicates a single image
        base = [(0, 0)]
    elif graph == "complete":
        base = [(i, j) for i in range(n) for j in range(i)]
    elif graph.startswith("swin"):
        k, cyclic = _window_name(graph, 3)
        cand = [(i, (i + o) % n if cyclic else i + o) for i in range(n) for o in range(1, k + 1)]
        base = _sorted_unordered((i, j) for i, j in cand if j < n)
    elif graph.startswith("logwin"):
        k, cyclic = _window_name(graph, 3)
        offs = [2 ** p for p in range(k)]
        cand = [(i, i + s * o) for i in range(n) for o in offs for s in (-1, 1)]
        cand = [(i, j % n) if cyclic else (i, j) for i, j in cand]
        base = _sorted_unordered((i, j) for i, j in cand if 0 <= j < n)
    elif graph.startswith("oneref"):
        parts = graph.split("-")
        ref = int(parts[1]) if len(parts) > 1 else 0
        if not 0 <= ref < n:
            raise ValueError(f"reference {ref} out of range for {n} images")
        base = [(ref, j) for j in range(n) if j != ref]
    else:
        raise ValueError(f"unknown scene graph {graph!r}")
    if prefilter:
        base = filter_pairs(base, prefilter, n)
    return _finish(base, symmetrize)


def filter_pairs(pairs, prefilter: str, n: int) -> list[tuple[int, int]]:
    """Keep pairs at most ``N`` apart: ``'seqN'`` (|i-j|) or ``'cycN'`` (cyclic distance over ``n``)."""
    if prefilter.startswith("seq"):
        N = int(prefilter[3:])
        return [(i, j) for i, j in pairs if abs(i - j) <= N]
    if prefilter.startswith("cyc"):
        N = int(prefilter[3:])
        return [(i, j) for i, j in pairs if min(abs(i - j), n - abs(i - j)) <= N]
    raise ValueError(f"unknown prefilter {prefilter!r}")


def symmetrized(pairs) -> np.ndarray:
    """``pairs`` followed by the same pairs reversed."""
    p = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    return np.concatenate([p, p[:, ::-1]], 0)


def _finish(base, symmetrize: bool) -> np.ndarray:
    p = np.asarray(base, dtype=np.int64).reshape(-1, 2)
    return symmetrized(p) if symmetrize else p


def _root_finder(parent: list[int]):
    """Union-find lookup with path halving over ``parent`` (shared by the connectivity check and Kruskal)."""
    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a
    return find


def is_connected(pairs, n: int) -> bool:
    """Whether the (undirected) pair graph connects all ``n`` images."""
    parent = list(range(n))
    find = _root_finder(parent)
    for i, j in np.asarray(pairs).reshape(-1, 2).tolist():
        parent[find(i)] = find(j)
    return len({find(i) for i in range(n)}) == 1


def max_spanning_tree(scores: np.ndarray) -> list[tuple[int, int]]:
    """Kruskal on a symmetric score matrix (higher = better); ties broken by (i, j) order; ``i < j``."""
    n = len(scores)
    cand = sorted(((-float(scores[i, j]), i, j) for i in range(n) for j in range(i + 1, n)
                   if np.isfinite(scores[i, j])))
    parent = list(range(n))
    find = _root_finder(parent)
    tree = []
    for _, i, j in cand:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[ri] = rj
            tree.append((i, j))
    return tree


def pairs_from_scores(scores, k: int | None = 5, min_score: float | None = None, window: int = 0,
                      connect: bool = True, symmetrize: bool = True) -> np.ndarray:
    """Select pairs from a symmetric ``[n, n]`` score matrix (view overlap, retrieval similarity).

    Union of: for every image its ``k`` best partners (all partners if ``k`` is None) whose score is
    ``>= min_score``; the ``window`` sequential neighbours ``(i, i+1..i+window)``; and, when
    ``connect``, a maximum spanning tree of the scores so the graph is always connected.
    Output order as the module docstring (sorted ``i < j``, then reversed copies).
    """
    S = np.asarray(scores, dtype=np.float64)
    S = (S + S.T) / 2
    n = len(S)
    chosen = set()
    for i in range(n):
        order = [j for j in np.argsort(-S[i], kind="stable") if j != i]
        if min_score is not None:
            order = [j for j in order if S[i, j] >= min_score]
        chosen.update((i, int(j)) for j in (order if k is None else order[:k]))
    chosen.update((i, i + o) for i in range(n) for o in range(1, window + 1) if i + o < n)
    if connect:
        chosen.update(max_spanning_tree(S))
    return _finish(_sorted_unordered(chosen), symmetrize)


def view_overlap(cam2world, K, H: int, W: int, depth=None, scene_depth: float | None = None,
                 stride: int = 8, occlusion_tol: float = 0.05) -> np.ndarray:
    """``O[i, j]`` = fraction of image ``i``'s (strided) pixels whose 3-D point is seen by camera ``j``.

    Points come from ``depth [n, H, W]`` when given (then a point hidden behind view ``j``'s depth by
    more than ``occlusion_tol`` is not counted), else from a constant ``scene_depth`` (default: the
    median distance between camera centres).  ``K``: ``[3, 3]`` or ``[n, 3, 3]``.  Diagonal = 1.
    """
    P = np.asarray(cam2world, dtype=np.float64)
    n = len(P)
    Ks = np.broadcast_to(np.asarray(K, dtype=np.float64), (n, 3, 3))
    vv, uu = np.mgrid[stride // 2:H:stride, stride // 2:W:stride]
    uu, vv = uu.ravel(), vv.ravel()
    if depth is None and scene_depth is None:
        c = P[:, :3, 3]
        d = np.linalg.norm(c[:, None] - c[None], axis=-1)
        scene_depth = float(np.median(d[np.triu_indices(n, 1)])) if n > 1 else 1.0
        scene_depth = scene_depth if scene_depth > 0 else 1.0
    O = np.eye(n)
    for i in range(n):
        d = np.full(uu.shape, scene_depth) if depth is None else np.asarray(depth[i], np.float64)[vv, uu]
        x = np.stack(((uu - Ks[i, 0, 2]) / Ks[i, 0, 0] * d, (vv - Ks[i, 1, 2]) / Ks[i, 1, 1] * d, d), -1)
        Xw = x @ P[i, :3, :3].T + P[i, :3, 3]
        for j in range(n):
            if j == i:
                continue
            y = (Xw - P[j, :3, 3]) @ P[j, :3, :3]
            z = y[:, 2]
            front = z > 1e-9
            zs = np.where(front, z, 1.0)
            u = Ks[j, 0, 0] * y[:, 0] / zs + Ks[j, 0, 2]
            v = Ks[j, 1, 1] * y[:, 1] / zs + Ks[j, 1, 2]
            ok = front & (u > -0.5) & (u < W - 0.5) & (v > -0.5) & (v < H - 0.5)
            if depth is not None and ok.any():
                ui = np.clip(np.round(u[ok]).astype(int), 0, W - 1)
                vi = np.clip(np.round(v[ok]).astype(int), 0, H - 1)
                dj = np.asarray(depth[j], np.float64)[vi, ui]
                vis = z[ok] <= dj * (1 + occlusion_tol)
                ok[np.flatnonzero(ok)[~vis]] = False
            O[i, j] = ok.mean()
    return O


def pairs_by_overlap(cam2world, K, H: int, W: int, depth=None, k: int | None = 4, min_overlap: float = 0.1,
                     symmetrize: bool = True, **kw) -> np.ndarray:
    """Pairs of views that see each other: symmetric overlap ``min(O_ij, O_ji)`` from ``view_overlap``,
    each image keeps its ``k`` best partners above ``min_overlap``, plus a maximum spanning tree."""
    O = view_overlap(cam2world, K, H, W, depth=depth, **kw)
    return pairs_from_scores(np.minimum(O, O.T), k=k, min_score=min_overlap, symmetrize=symmetrize)


def pairs_by_retrieval(features, k: int = 5, window: int = 0, min_similarity: float | None = None,
                       symmetrize: bool = True) -> np.ndarray:
    """Pairs from global retrieval descriptors ``[n, D]``: cosine similarity, ``k`` nearest per image,
    optional sequential ``window`` (MASt3R's ``retrieval-Na-k`` idea), plus a maximum spanning tree."""
    F = np.asarray(features, dtype=np.float64)
    F = F / np.maximum(np.linalg.norm(F, axis=1, keepdims=True), 1e-12)
    return pairs_from_scores(F @ F.T, k=k, min_score=min_similarity, window=window, symmetrize=symmetrize)
