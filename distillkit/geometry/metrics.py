"""Accuracy metrics for aligned scenes (similarity-invariant point errors, relative pose errors)."""

from __future__ import annotations

import numpy as np

from distillkit.geometry.cameras import rotation_angle_deg
from distillkit.geometry.procrustes import apply_similarity, weighted_umeyama


def aligned_point_errors(pts, ref, ref_depth, ref_to_metric: float = 1.0) -> np.ndarray:
    """Distances of ``pts`` to ``ref`` after the least-squares similarity fit of ``pts`` onto ``ref``,
    converted to the units of ``ref_depth`` by ``ref_to_metric`` and divided by ``ref_depth`` (flat)."""
    P = np.asarray(pts, np.float64).reshape(-1, 3)
    Q = np.asarray(ref, np.float64).reshape(-1, 3)
    sim = weighted_umeyama(P, Q)
    d = np.linalg.norm(apply_similarity(*sim, P) - Q, axis=1) * ref_to_metric
    return d / np.asarray(ref_depth, np.float64).reshape(-1)


def similarity_scale(src, dst) -> float:
    """Scale of the least-squares similarity mapping points ``src`` onto ``dst``."""
    a = np.asarray(src, np.float64).reshape(-1, 3)
    return float(weighted_umeyama(a, np.asarray(dst, np.float64).reshape(-1, 3))[0])


def relative_rotation_errors(c2w, c2w_ref) -> np.ndarray:
    """Angle (deg) between estimated and reference relative rotations ``R_i^T R_j``, all pairs ``i < j``."""
    R = np.asarray(c2w, np.float64)[:, :3, :3]
    Rr = np.asarray(c2w_ref, np.float64)[:, :3, :3]
    i, j = np.triu_indices(len(R), 1)
    rel = np.swapaxes(R[i], 1, 2) @ R[j]
    rel_ref = np.swapaxes(Rr[i], 1, 2) @ Rr[j]
    return rotation_angle_deg(rel @ np.swapaxes(rel_ref, 1, 2))


def relative_translation_errors(c2w, c2w_ref) -> np.ndarray:
    """Angle (deg) between estimated and reference relative translation directions, pairs ``i < j``."""
    T = np.asarray(c2w, np.float64)
    Tr = np.asarray(c2w_ref, np.float64)
    i, j = np.triu_indices(len(T), 1)

    def dirs(M):
        v = np.einsum("nba,nb->na", M[i, :3, :3], M[j, :3, 3] - M[i, :3, 3])  # centre j in camera i
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    return np.degrees(np.arccos(np.clip((dirs(T) * dirs(Tr)).sum(1), -1, 1)))
