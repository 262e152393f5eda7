"""Input checks for global alignment: each bad input is a ``ValueError`` that names the scene and the frames.

Checked before anything is solved or written: fewer than two images, a pair graph that is not connected
(the aligner would otherwise fail deep inside, or place the parts in unrelated frames), non-finite pointmaps
or confidences in a pair, a pair whose confidences carry no weight (all <= 1, so ``log(conf)`` is 0 on
every pixel of both views: all-zero or missing confidences), and frames of different sizes in one scene.
"""

from __future__ import annotations

import numpy as np

from distillkit.geometry.pairs import _root_finder


def frame_name(frame_ids, k: int) -> str:
    return f"frame {frame_ids[k]}" if frame_ids is not None and k < len(frame_ids) else f"image {k}"


def components(edges, n: int) -> list[list[int]]:
    """Connected components of the (undirected) pair graph over images ``0..n-1``, largest first."""
    parent = list(range(n))
    find = _root_finder(parent)
    for i, j in np.asarray(edges, np.int64).reshape(-1, 2).tolist():
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[ri] = rj
    groups: dict[int, list[int]] = {}
    for k in range(n):
        groups.setdefault(find(k), []).append(k)
    return sorted(groups.values(), key=lambda g: (-len(g), g[0]))


def _names(frame_ids, ks, limit: int = 8) -> str:
    names = [frame_name(frame_ids, k) for k in ks[:limit]]
    return ", ".join(names) + (f" and {len(ks) - limit} more" if len(ks) > limit else "")


def check_graph(edges, n: int, scene: str = "scene", frame_ids=None) -> None:
    """At least two images, every image in a pair, one connected component."""
    if n < 2:
        only = f" ({_names(frame_ids, [0])})" if n == 1 else ""
        raise ValueError(f"scene {scene}: a single image{only}; global alignment needs at least two frames")
    comps = components(edges, n)
    if len(comps) > 1:
        parts = "; ".join(f"[{_names(frame_ids, c)}]" for c in comps[:4])
        raise ValueError(f"scene {scene}: the pair graph is not connected ({len(comps)} parts: {parts}"
                         f"{' ...' if len(comps) > 4 else ''}); add pairs between them (a wider window, "
                         f"logwin or complete graph)")


def check_pair_values(edge: tuple[int, int], pts1, pts2, conf1, conf2, scene: str = "scene", frame_ids=None,
                      e: int | None = None) -> None:
    """One pair's outputs: finite points and confidences, and some confidence above 1 (a non-zero weight)."""
    i, j = edge
    what = f"scene {scene}: pair ({frame_name(frame_ids, i)}, {frame_name(frame_ids, j)})" + \
        (f" (edge {e})" if e is not None else "")
    for name, a in (("pts1", pts1), ("pts2", pts2), ("conf1", conf1), ("conf2", conf2)):
        bad = int(np.size(a) - np.isfinite(a).sum())
        if bad:
            raise ValueError(f"{what}: {bad} NaN/Inf value(s) in {name}; the pair outputs are unusable")
    if not (np.max(conf1) > 1 or np.max(conf2) > 1):
        raise ValueError(f"{what}: all confidences are {'zero' if not np.any(conf1) and not np.any(conf2) else '<= 1'}"
                         f" (max conf1 {float(np.max(conf1)):g}, conf2 {float(np.max(conf2)):g}), so the pair has "
                         f"no weight (log-confidence 0 everywhere)")


def check_pairs(preds, scene: str = "scene", frame_ids=None) -> None:
    """Every check on a ``PairPredictions`` (one edge read at a time: inputs may be lazy)."""
    check_graph(preds.edges, preds.n_images, scene, frame_ids)
    for e, (i, j) in enumerate(preds.edges.tolist()):
        check_pair_values((i, j), np.asarray(preds.pts1[e]), np.asarray(preds.pts2[e]), np.asarray(preds.conf1[e]),
                          np.asarray(preds.conf2[e]), scene, frame_ids, e)


def check_sizes(hws, scene: str = "scene", frame_ids=None) -> None:
    """All frames of a scene must have one size (the aligner's unknowns are per-pixel depth maps)."""
    sizes: dict[tuple, list[int]] = {}
    for k, hw in enumerate(hws):
        sizes.setdefault(tuple(int(x) for x in hw), []).append(k)
    if len(sizes) > 1:
        parts = "; ".join(f"{h}x{w}: {_names(frame_ids, ks, 4)}" for (h, w), ks in
                          sorted(sizes.items(), key=lambda kv: -len(kv[1])))
        raise ValueError(f"scene {scene}: frames of different sizes ({parts}); one scene must have one size "
                         f"(crop them alike, or set mixed_sizes: skip to drop the odd ones)")
