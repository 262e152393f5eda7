"""``bench_align``: our global alignment vs a faithful re-implementation of the official Adam optimiser,
timed side by side in one process with the same thread count (ratios are what to compare: the
machines are shared and noisy)."""

from __future__ import annotations

import os
import resource
import time

import numpy as np
import torch

from distillkit.geometry.align import AlignConfig, align
from distillkit.geometry.init import spanning_tree_init
from distillkit.geometry.metrics import (aligned_point_errors, relative_rotation_errors, relative_translation_errors,
                      similarity_scale)
from distillkit.geometry.predictions import PairPredictions
from distillkit.geometry.problem import Problem, grid_index


def _reset_peak_rss() -> bool:
    try:  # Linux: "5" resets the peak RSS (VmHWM) of this process
        with open(f"/proc/{os.getpid()}/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    try:
        with open(f"/proc/{os.getpid()}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _parse_size(size: str | None) -> tuple[int, int]:
    if not size:
        return 48, 64
    h, w = size.lower().replace("×", "x").split("x")
    return int(h), int(w)


def _accuracy(data, pts3d, depth, c2w, focals, prefix: str = "") -> dict:
    out = {}
    if "gt_cam2world" in data:
        rot = relative_rotation_errors(c2w, data["gt_cam2world"])
        tra = relative_translation_errors(c2w, data["gt_cam2world"])
        out.update({"rel_rot_err_deg_mean": float(rot.mean()), "rel_rot_err_deg_max": float(rot.max()),
                    "rel_trans_dir_err_deg_mean": float(tra.mean()), "rel_trans_dir_err_deg_max": float(tra.max())})
    if "gt_K" in data:
        f_gt = float(np.asarray(data["gt_K"]).reshape(-1, 3, 3)[0, 0, 0])
        out["focal_rel_err_mean"] = float(np.mean(np.abs(np.asarray(focals).ravel() / f_gt - 1)))
    if "gt_pts3d_world" in data:
        err = aligned_point_errors(pts3d, data["gt_pts3d_world"], data["gt_depth"])
        out["mean_dist_to_gt_over_depth"] = float(err.mean())
    if "ga_pts3d" in data:
        to_metric = similarity_scale(data["ga_pts3d"], data["gt_pts3d_world"]) if "gt_pts3d_world" in data else 1.0
        denom = data["gt_depth"] if "gt_depth" in data else data["ga_depth"]
        err = aligned_point_errors(pts3d, data["ga_pts3d"], denom, to_metric)
        out["mean_dist_to_reference_over_depth"] = float(err.mean())
        out["max_dist_to_reference_over_depth"] = float(err.max())
        ga_f = np.asarray(data["ga_focals"]).ravel()
        out["focal_rel_err_vs_reference_max"] = float(np.max(np.abs(np.asarray(focals).ravel() / ga_f - 1)))
    return {prefix + k: v for k, v in out.items()}


def bench_align(fixture: str | None = None, synthetic: int | None = None, size: str | None = None,
                graph: str = "swin-3", noise: float = 0.01, seed: int = 0, reference: bool = False,
                reference_iters: int = 300, threads: int | None = 1, pose_pixels: int | None = 4096,
                repeats: int = 1, config: AlignConfig | None = None, exact: str | None = None) -> dict:
    """Time and score ``align`` on a fixture file or a synthetic scene.

    ``fixture``: path of an ``.npz`` with the ``ga_scene6.npz`` keys; or ``synthetic=N`` images of
    ``size='HxW'`` (default 48x64) over pair graph ``graph`` with point noise ``noise`` (seeded).
    ``threads``: torch intra-op threads for both runs (restored afterwards; None = leave as is).
    ``repeats``: run our aligner this many times and report the fastest (``wall_s_all`` lists all).
    ``reference=True`` also runs the official-style Adam loop (``reference_iters`` iterations, same
    init) and reports its wall time, accuracy and ``speedup`` = reference wall / our wall.

    Returned keys: ``wall_s`` (ours: build + init + joint stage + dense stage), ``iterations``,
    ``peak_rss_mb`` (peak resident memory during our alignment, inputs included), ``loss``, accuracy
    ``rel_rot_err_deg_mean/max``, ``rel_trans_dir_err_deg_mean/max``, ``focal_rel_err_mean`` (vs the
    true focal), ``mean_dist_to_gt_over_depth``; with a file holding the official result
    (``ga_pts3d``): ``mean_dist_to_reference_over_depth`` (our points after a similarity fit onto
    ``ga_pts3d``, in ground-truth units, over ground-truth depth), ``max_...`` and
    ``focal_rel_err_vs_reference_max``; with ``reference``: ``reference_wall_s``,
    ``reference_per_iter_ms``, ``reference_loss``, ``speedup`` and the reference's accuracy (``ref_`` keys).
    With ``reference_iters < 300`` the 300-iteration time is extrapolated from the measured per-iteration
    time (``reference_wall_s_300``, ``reference_extrapolated``) and ``speedup`` uses it; the ``ref_``
    accuracy is then that of the truncated run.

    ``exact``: also compute the exact full-resolution optimum and report our distance to it
    (``mean/max_dist_to_exact_over_depth``: after a similarity fit, over ground-truth depth) and its own
    ``exact_*`` figures; ``"full"`` = the joint stage on every pixel (``pose_pixels=None``, memory
    ``O(edges x H x W)``), ``"converged"`` = our fine stage iterated to convergence (streamed).
    """
    if (fixture is None) == (synthetic is None):
        raise ValueError("give exactly one of fixture / synthetic")
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        t0 = time.perf_counter()
        if fixture is not None:
            with np.load(fixture) as z:
                data = {k: z[k] for k in z.files}
            source = {"fixture": str(fixture)}
        else:
            from distillkit.scenes.synthetic import make_scene
            H, W = _parse_size(size)
            data = make_scene(int(synthetic), H, W, graph=graph, noise=noise, seed=seed)
            source = {"synthetic": int(synthetic), "size": f"{H}x{W}", "graph": graph, "noise": noise, "seed": seed}
        preds = PairPredictions.from_mapping(data)
        gen_s = time.perf_counter() - t0
        cfg = config or AlignConfig(pose_pixels=pose_pixels)
        _reset_peak_rss()
        walls = []
        for _ in range(max(1, int(repeats))):
            t1 = time.perf_counter()
            res = align(preds, cfg)
            walls.append(time.perf_counter() - t1)
        wall = min(walls)
        out = {"bench": "align", **source, "n_images": preds.n_images, "n_edges": preds.n_edges,
               "H": preds.hw[0], "W": preds.hw[1], "threads": torch.get_num_threads(), "load_s": gen_s,
               "wall_s": wall, "wall_s_all": walls, "iterations": res.iterations, "peak_rss_mb": _peak_rss_mb(),
               "loss": res.loss,
               "timings": res.timings, "pose_stage_pixels": res.residuals.get("pose_stage_pixels"),
               "residual_mean_rel_dist": res.residuals.get("mean_rel_dist")}
        if "ga_final_loss" in data:
            out["reference_official_loss"] = float(data["ga_final_loss"])
        out.update(_accuracy(data, res.pts3d, res.depth, res.cam2world, res.focals))
        out["fine_iterations"] = res.residuals.get("fine_iterations")
        if exact:
            out.update(_run_exact(preds, data, res, cfg, exact))
        if reference:
            out.update(_run_reference(preds, data, reference_iters))
            out["speedup"] = out.get("reference_wall_s_300", out["reference_wall_s"]) / wall
        return out
    finally:
        torch.set_num_threads(old_threads)


def _run_reference(preds: PairPredictions, data: dict, niter: int) -> dict:
    from distillkit.geometry.reference_ga import ReferenceGA, run_reference

    H, W = preds.hw
    t0 = time.perf_counter()
    prob = Problem.build(preds, grid_index(H, W, None)[0])
    st = spanning_tree_init(prob)
    model = ReferenceGA(preds)
    c2w = np.tile(np.eye(4), (preds.n_images, 1, 1))
    c2w[:, :3, :3], c2w[:, :3, 3] = st.R, st.t
    model.set_state(c2w, np.exp(st.logf), np.exp(st.logd), st.Rp, st.Tp, np.exp(st.sig))
    init_s = time.perf_counter() - t0
    ref = run_reference(model, niter=niter)
    out = {"reference_wall_s": init_s + ref["loop_s"], "reference_init_s": init_s,
           **({"reference_wall_s_300": init_s + ref["loop_s"] / niter * 300, "reference_extrapolated": True}
              if niter < 300 else {}),
           "reference_per_iter_ms": ref["loop_s"] / niter * 1e3, "reference_iters": niter,
           "reference_loss": ref["final_loss"]}
    out.update(_accuracy(data, ref["pts3d"], ref["depth"], ref["cam2world"], ref["focals"], prefix="ref_"))
    return out


def _run_exact(preds: PairPredictions, data: dict, res, cfg: AlignConfig, mode: str) -> dict:
    from dataclasses import replace

    if mode == "full":
        ecfg = replace(cfg, pose_pixels=None, tol=1e-9, max_iters=max(cfg.max_iters, 12))
    elif mode == "converged":
        ecfg = replace(cfg, fine_iters=12, fine_tol=1e-11)
    else:
        raise ValueError(f"exact must be 'full' or 'converged', got {mode!r}")
    t0 = time.perf_counter()
    ex = align(preds, ecfg)
    out = {"exact_mode": mode, "exact_wall_s": time.perf_counter() - t0, "exact_loss": ex.loss,
           "exact_peak_rss_mb": _peak_rss_mb()}
    out.update(_accuracy(data, ex.pts3d, ex.depth, ex.cam2world, ex.focals, prefix="exact_"))
    denom = data["gt_depth"] if "gt_depth" in data else ex.depth
    to_metric = similarity_scale(ex.pts3d, data["gt_pts3d_world"]) if "gt_pts3d_world" in data else 1.0
    err = aligned_point_errors(res.pts3d, ex.pts3d, denom, to_metric)
    out["mean_dist_to_exact_over_depth"] = float(err.mean())
    out["max_dist_to_exact_over_depth"] = float(err.max())
    out["focal_rel_err_vs_exact_max"] = float(np.max(np.abs(res.focals / ex.focals - 1)))
    if "exact_rel_rot_err_deg_mean" in out:
        ours = relative_rotation_errors(res.cam2world, data["gt_cam2world"])
        out["rot_err_mean_vs_exact_ratio"] = float(ours.mean() / max(out["exact_rel_rot_err_deg_mean"], 1e-300))
        out["rot_err_max_vs_exact_ratio"] = float(ours.max() / max(out["exact_rel_rot_err_deg_max"], 1e-300))
    return out
