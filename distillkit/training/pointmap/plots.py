"""Pointmap-student figures: the training curve (`plot_pointmap_curve`, written by the trainer) and
`distillkit show --scene S --checkpoint C` (`show_student`): a student's prediction beside the teacher's on test
frames.

Columns of `show_student`: the image, the teacher's (globally aligned) world pointmap and the student's, both
coloured by xyz in one scene-wide box (same colour = same place), and the per-pixel L2 error in world units. Rows:
held-out frames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from distillkit.scenes.data import SceneData
from distillkit.scenes import store as scene_store
from distillkit.scenes.figures import Panel, box_label, panel_figure, pointmap_rgb, save, world_unit
from distillkit.training.pointmap.evaluate import load_pointmap_student, predict_frames
from distillkit.training.pointmap.sampling import SceneTensors


def plot_pointmap_curve(metrics: dict, path: str | Path, title: str = "") -> Path:
    """Training loss per step (log scale) and the held-out mean L2 at each evaluation (right axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4))
    tr = metrics.get("train", [])
    if tr:
        ax.plot([r["step"] for r in tr], [r["loss"] for r in tr], lw=1.0, label="train loss")
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(f"{metrics.get('config', {}).get('loss', 'mse')} loss (targets x "
                  f"{metrics.get('config', {}).get('target_scale', 1.0):g})")
    ev = [e for e in metrics.get("eval", []) if "mean_l2" in e]
    if ev:
        ax2 = ax.twinx()
        ax2.plot([e["step"] for e in ev], [e["mean_l2"] for e in ev], "o-", color="C3", ms=3, label="held-out mean L2")
        ax2.set_ylabel("held-out mean L2 (world units)")
        ax2.set_yscale("log")
        ax2.legend(loc="upper right", fontsize=8)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title or "pointmap student")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _pick(idx: np.ndarray, n: int) -> np.ndarray:
    if n >= len(idx):
        return idx
    return idx[np.unique(np.round(np.linspace(0, len(idx) - 1, n)).astype(int))]


def show_student(store: str, scene: str, checkpoint: str | Path, out_dir: str | Path, n_frames: int = 4,
                 storage_options: dict | None = None, frames: str = "test") -> dict:
    """Write ``overview.png`` (matplotlib grid with an error colour bar) and per frame ``<frame>_student.png`` and
    ``<frame>_error.png`` into `out_dir`; returns the files and each frame's mean L2 error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model, cfg, spec = load_pointmap_student(checkpoint)
    if spec["scene"] != scene:
        raise ValueError(f"{checkpoint} is a student of scene {spec['scene']!r}, not {scene!r} (scene-specific "
                         f"students only predict their own scene)")
    data = SceneData.from_store(store, scene, storage_options)
    unit = world_unit(scene_store.open_store(store, "r", storage_options), scene)
    hw = tuple(spec["image_hw"])
    if frames == "test" and not len(data.test_idx):
        frames = "train"  # nothing held out: show training frames, and say so
    pool = data.test_idx if frames == "test" else data.train_idx
    idx = _pick(pool, n_frames)
    pred = predict_frames(model, SceneTensors(data, hw), idx, "cpu")
    err = np.linalg.norm(pred["pred"].astype(np.float64) - np.nan_to_num(pred["target"]), axis=-1)
    err[~pred["mask"]] = np.nan  # [n, H, W] per-pixel L2; NaN where the target is invalid
    valid_pts = data.pts3d[data.mask]
    lo, hi = np.percentile(valid_pts, 2, axis=0), np.percentile(valid_pts, 98, axis=0)
    emax = float(np.nanpercentile(err, 95)) if np.isfinite(err).any() else 1.0
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids = [f"frame{int(k):05d}" for k in idx]
    files, per_frame = [], []
    fig, axes = plt.subplots(len(idx), 4, figsize=(13, 2.6 * len(idx) + 0.6), squeeze=False)
    for r, k in enumerate(idx):
        image = np.asarray(Image.fromarray(data.images[k]).resize(hw[::-1], Image.BILINEAR))
        teacher = pointmap_rgb(np.where(pred["mask"][r][..., None], pred["target"][r], np.nan), lo, hi)
        student = pointmap_rgb(pred["pred"][r], lo, hi)
        e = err[r]
        mean_l2 = float(np.nanmean(e)) if np.isfinite(e).any() else float("nan")
        per_frame.append({"frame": int(k), "mean_l2": mean_l2})
        for kind, panel in (("student", Panel(f"student ({cfg.student.kind}) pointmap", student,
                                              box_label(lo, hi, unit))),
                            ("error", Panel(f"L2 error, mean {mean_l2:.3g} {unit.split(',')[0]}", e,
                                            f"L2 error ({unit})", "inferno", 0.0, emax))):
            files.append(save(panel_figure(panel, f"{scene} {ids[r]}: {panel.title}"), out / f"{ids[r]}_{kind}.png"))
        for c, (title, rgb) in enumerate((("image", image), ("teacher (aligned DUSt3R)", teacher),
                                           (f"student ({cfg.student.kind})", student))):
            axes[r, c].imshow(rgb)
            axes[r, c].set_title(f"{ids[r]}: {title}" if c == 0 else title, fontsize=9)
        im = axes[r, 3].imshow(np.where(np.isfinite(e), e, np.nan), cmap="inferno", vmin=0, vmax=emax)
        axes[r, 3].set_title(f"L2 error, mean {mean_l2:.3g} {unit.split(',')[0]}", fontsize=9)
        bar = fig.colorbar(im, ax=axes[r, 3], fraction=0.046, pad=0.02)
        bar.set_label(f"L2 error ({unit})", fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    for c in (1, 2):
        axes[-1, c].set_xlabel(box_label(lo, hi, unit), fontsize=6)
    fig.suptitle(f"{scene}: {cfg.student.kind} student ({checkpoint}) vs teacher, {frames} frames at "
                 f"{hw[0]}x{hw[1]} px; xyz colours share one scene box ({unit})", fontsize=9)
    fig.tight_layout()
    overview = out / "overview.png"
    fig.savefig(overview, dpi=90)
    plt.close(fig)
    return {"overview": str(overview), "files": files, "frames": per_frame, "scene": scene, "pool": frames,
            "mean_l2": float(np.nanmean(err)) if np.isfinite(err).any() else float("nan")}
