"""Global alignment of pairwise pointmaps (DUSt3R's ``PointCloudOptimizer`` objective), fast.

``align(pairs, config) -> AlignResult``.  Same unknowns and objective as the official optimiser
(``shared/notes/dust3r.md`` section 3): per image a depth map, a camera-to-world pose and one focal
(principal point fixed at the centre); per directed edge a similarity; loss = sum of ``log(conf)``-
weighted un-squared distances between each image's world points and every edge's aligned pointmaps,
each side divided by ``sum_e H*W``; gauge = geometric mean of the edge scales fixed to ``base_scale``
(dropped when two or more poses are known, as officially).

What we do instead of 300 Adam steps, and why:

1. **Spanning-tree + Procrustes init, PnP-free** (``init.py``): the notes show the official optimum does
   not depend on the (RANSAC-PnP) init on well-conditioned scenes; ours is deterministic.
2. **Pose stage, joint second order** (``solver.py``): Levenberg-Marquardt / Gauss-Newton on all
   unknowns at once, with the un-squared norm modelled by a blend of its IRLS majoriser and its exact
   Hessian (``beta``), and the per-pixel depths eliminated exactly by a Schur complement so each
   iteration solves a dense ``7 (cameras + edges)`` system.  Alternating closed-form blocks (Procrustes
   for the edges, per-ray depths, small pose fits) was the other candidate; it converges linearly and
   slowly here because depth, pose and edge scale are strongly coupled (every block step is undone by
   the next), whereas the joint step moves them together: on the fixture 5-6 iterations reach the
   official optimum to ~1e-5 of depth.  This stage runs on at most ``pose_pixels`` pixels per image (a
   regular sub-grid; all pixels for small images), so its memory is ``O(edges x pose_pixels)``; it is
   solved first on the 2x coarser grid (loose tolerance), then moved to its grid (optimal depths there
   for the current cameras/edges) for the last few iterations.
3. **Dense stage** (``dense.py``): with cameras and edges fixed the objective separates into one convex
   1-D problem per pixel, solved by safeguarded Newton, streaming one image / pixel chunk at a time
   (memory ``O(observations of one image x chunk)``).  Skipped when the pose stage already used every
   pixel (then the depths are already the joint optimum); it also yields full-resolution residuals.
4. **Fine stage** (``refine.py``): the sub-grid optimum is not the full-resolution one (sampling noise:
   on 12 x 192x256 views, 3x the exact optimum's rotation error, 1e-4 of depth), so 1-3 Newton steps
   (``fine_beta = 1``: the exact Hessian of the norm) on **every pixel**, depths eliminated, the reduced
   system accumulated image by image and pixel chunk by pixel chunk from the predictions, and each
   candidate scored with exactly re-solved depths (the dense stage again).  Coarse-to-fine rather than
   more pose-stage pixels because the pose stage keeps ``O(edges x pixels)`` float64 in memory and its
   IRLS-blend model converges linearly, while one exact-Hessian step from the sub-grid optimum lands
   within ~1e-6 of depth of the exact optimum at the memory of the dense stage.

Known poses / intrinsics: pass ``known_cam2world`` (all, or with ``known_pose_mask``) and/or
``known_focals``; those stay fixed (then only depths, edges and the remaining cameras move).  With two
or more known poses there is no scale gauge (as officially) and the objective itself prefers slightly
shrunken edge scales on noisy predictions (the un-squared noise shrinks with them): expect depths a
few per cent short, and focals biased, unless the focals are known too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from distillkit.geometry.checks import check_pairs
from distillkit.geometry.dense import dense_depths, problem_depths
from distillkit.geometry.incremental import Previous, incremental_init
from distillkit.geometry.init import spanning_tree_init
from distillkit.geometry.predictions import PairPredictions
from distillkit.geometry.problem import Problem, State, grid_index, strided_index, weighted_loss
from distillkit.geometry.procrustes import similarity_to_matrix
from distillkit.geometry.refine import refine_full
from distillkit.geometry.solver import Freedom, SolverOptions, solve


@dataclass
class AlignConfig:
    base_scale: float = 0.5  # geometric mean of the edge scales (official gauge)
    min_conf_thr: float = 3.0  # only for the output masks (im_conf > thr), as officially
    pose_pixels: int | None = 4096  # max pixels per image in the joint stage (None: all)
    beta: float = 0.5  # curvature blend of the norm model (0 = IRLS, 1 = exact Hessian)
    max_iters: int = 30
    tol: float = 1e-5  # relative loss decrease that ends the joint stage
    coarse_to_fine: bool = True  # joint stage first on the 2x coarser grid (when it has >= 2048 pixels)
    coarse_tol: float = 1e-3
    step_tol: float = 1e-6
    fine_iters: int = 3  # full-resolution Newton steps after the pose stage, depths eliminated (0: none)
    fine_tol: float = 1e-3  # a step that lowers the loss by less (relative) is the last: convergence is quadratic
    fine_beta: float = 1.0  # exact Hessian of the norm there (near the optimum it does not overshoot)
    dense_iters: int = 60  # max safeguarded-Newton iterations per pixel in the dense stage
    chunk_pixels: int = 16384  # dense stage: pixels per chunk (small chunks keep temporaries in cache)
    known_cam2world: np.ndarray | None = None  # [n, 4, 4] camera-to-world, fixed
    known_pose_mask: np.ndarray | None = None  # [n] bool: which of known_cam2world to use (default all)
    known_focals: np.ndarray | None = None  # [n] (NaN = unknown), fixed
    principal_point: tuple[float, float] | None = None  # default (W/2, H/2)
    verbose: bool = False
    scene: str = "scene"  # named in input errors, with frame_ids (default: image indices)
    frame_ids: list | None = None
    previous: Previous | None = None  # incremental: a previous alignment of images 0..m-1 (incremental.py)
    check_inputs: bool = True  # graph connected, >= 2 images, finite outputs, non-zero confidences (checks.py)


@dataclass
class AlignResult:
    pts3d: np.ndarray  # [n, H, W, 3] world points (float32)
    depth: np.ndarray  # [n, H, W]
    cam2world: np.ndarray  # [n, 4, 4]
    focals: np.ndarray  # [n]
    K: np.ndarray  # [n, 3, 3]
    im_conf: np.ndarray  # [n, H, W] max confidence over the edges predicting each pixel
    masks: np.ndarray  # [n, H, W] im_conf > min_conf_thr
    pw_poses: np.ndarray  # [E, 4, 4] edge similarities, scale folded into the top rows
    pw_scale: np.ndarray  # [E]
    loss: float  # official objective at full resolution
    iterations: int  # joint-stage iterations
    residuals: dict = field(default_factory=dict)  # full-resolution residual statistics
    loss_history: list = field(default_factory=list)  # joint stage (on its pixel subset)
    timings: dict = field(default_factory=dict)
    edges: np.ndarray | None = None


def image_confidence(preds: PairPredictions) -> np.ndarray:
    """Per-image max confidence over all edges that predict the image (official ``im_conf``)."""
    H, W = preds.hw
    im = np.zeros((preds.n_images, H, W), np.float32)
    for e, (i, j) in enumerate(preds.edges.tolist()):
        np.maximum(im[i], preds.conf1[e], out=im[i])
        np.maximum(im[j], preds.conf2[e], out=im[j])
    return im


def align(pairs: PairPredictions, config: AlignConfig | None = None) -> AlignResult:
    """Globally align pairwise predictions; see the module docstring for the method."""
    cfg = config or AlignConfig()
    log = (lambda msg, *_: print(msg)) if cfg.verbose else None
    H, W = pairs.hw
    n = pairs.n_images
    t0 = time.perf_counter()
    if cfg.check_inputs:
        check_pairs(pairs, cfg.scene, cfg.frame_ids)
    index, stride = grid_index(H, W, cfg.pose_pixels)
    levels = [(index, cfg.tol)]
    if cfg.coarse_to_fine and len(index) >= 2048:  # first on the 2x coarser grid, loosely
        levels.insert(0, (strided_index(H, W, 2 * stride), cfg.coarse_tol))
    known = np.zeros(n, bool)
    if cfg.known_cam2world is not None:
        known = np.ones(n, bool) if cfg.known_pose_mask is None else np.asarray(cfg.known_pose_mask, bool)
    focal_known = np.zeros(n, bool)
    if cfg.known_focals is not None:
        kf = np.asarray(cfg.known_focals, np.float64).reshape(-1)
        focal_known = np.isfinite(kf) & (kf > 0)
    pose_free = ~known
    if not known.any():
        pose_free[0] = False  # rigid gauge
    fr = Freedom(pose_free, ~focal_known, bool(known.sum() < 2))
    st = None
    its, history, level_its, tm = 0, [], [], {"build_s": 0.0, "init_s": 0.0, "solve_s": 0.0}
    for idx, tol in levels:
        ta = time.perf_counter()
        prob = Problem.build(pairs, idx, cfg.principal_point)
        tb = time.perf_counter()
        if st is None:
            if cfg.previous is not None and not known.any():  # known poses anchor the scene by themselves
                st = incremental_init(prob, cfg.previous, cfg.base_scale)
            else:
                st = spanning_tree_init(prob, cfg.known_cam2world, cfg.known_pose_mask, cfg.known_focals,
                                        cfg.base_scale)
            init_loss = weighted_loss(prob, st)
        else:  # move to the finer grid: optimal depths there for the current cameras and edges
            st = State(st.R, st.t, st.logf, problem_depths(prob, st), st.Rp, st.Tp, st.sig)
        tc = time.perf_counter()
        opt = SolverOptions(max_iters=cfg.max_iters, beta=cfg.beta, tol=tol, step_tol=cfg.step_tol)
        st, loss_sub, it, hist = solve(prob, st, fr, opt, log=log)
        its += it
        level_its.append(it)
        history += hist
        tm["build_s"] += tb - ta
        tm["init_s"] += tc - tb
        tm["solve_s"] += time.perf_counter() - tc
    t3 = time.perf_counter()

    focals = np.exp(st.logf)
    if focal_known.any():  # exactly the given values
        focals[focal_known] = np.asarray(cfg.known_focals, np.float64).reshape(-1)[focal_known]
    sR = np.exp(st.sig)[:, None, None] * st.Rp
    full = prob.S == H * W
    depth_in = np.exp(st.logd).reshape(n, H, W) if full else None
    depth, stats = dense_depths(pairs, st.R, st.t, focals, sR, st.Tp, cfg.principal_point, depth_in,
                                cfg.dense_iters, cfg.chunk_pixels)
    t4 = time.perf_counter()
    fine_its = 0
    if not full and cfg.fine_iters:  # the sub-grid optimum is not the full-resolution one: a few full steps
        st, depth, stats, fine_its, fine_hist = refine_full(pairs, st, depth, stats, fr, cfg.principal_point,
                                                            cfg.fine_beta, cfg.fine_iters, cfg.fine_tol,
                                                            cfg.dense_iters, cfg.chunk_pixels, log)
        history += fine_hist[1:]
        focals = np.exp(st.logf)
        if focal_known.any():
            focals[focal_known] = np.asarray(cfg.known_focals, np.float64).reshape(-1)[focal_known]
    t5 = time.perf_counter()
    res = _assemble(pairs, cfg, st, focals, depth, stats, its, history)
    res.residuals.update({"init_loss_pose_stage": init_loss, "loss_pose_stage": loss_sub,
                          "pose_stage_pixels": prob.S, "pose_stage_stride": stride,
                          "iterations_per_level": level_its, "fine_iterations": fine_its})
    res.timings = {**tm, "dense_s": t4 - t3, "fine_s": t5 - t4, "total_s": time.perf_counter() - t0}
    return res


def _assemble(pairs, cfg, st: State, focals, depth, stats, its, history) -> AlignResult:
    H, W = pairs.hw
    n = pairs.n_images
    cx, cy = cfg.principal_point or (W / 2.0, H / 2.0)
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, :3, :3], c2w[:, :3, 3] = st.R, st.t
    K = np.tile(np.eye(3), (n, 1, 1))
    K[:, 0, 0] = K[:, 1, 1] = focals
    K[:, 0, 2], K[:, 1, 2] = cx, cy
    v, u = np.mgrid[:H, :W]
    pts = np.empty((n, H, W, 3), np.float32)
    for k in range(n):
        d = depth[k].astype(np.float64)
        cam = np.stack(((u - cx) / focals[k] * d, (v - cy) / focals[k] * d, d), -1)
        pts[k] = cam @ st.R[k].T + st.t[k]
    im_conf = image_confidence(pairs)
    scale = np.exp(st.sig)
    return AlignResult(pts, depth, c2w, focals, K, im_conf, im_conf > cfg.min_conf_thr,
                       similarity_to_matrix(scale, st.Rp, st.Tp), scale, stats["loss"], its,
                       dict(stats), list(history), edges=pairs.edges.copy())


def result_to_state(res: AlignResult) -> dict:
    """Plain-array view of a result (for saving with ``np.savez``)."""
    out = {k: getattr(res, k) for k in ("pts3d", "depth", "cam2world", "focals", "K", "im_conf", "masks",
                                        "pw_poses", "pw_scale", "edges")}
    out["loss"] = np.float64(res.loss)
    return out

