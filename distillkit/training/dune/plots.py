"""Plots: training loss curves (per teacher) with held-out evaluation points, and PCA views of teacher and student
patch features (`distillkit show --checkpoint`)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from distillkit_schemas import paths  # noqa: E402


def plot_loss_curve(metrics: dict, path: str | Path) -> Path:
    """`loss_curve_figure` as a PNG at `path`."""
    path = Path(path)
    fig = loss_curve_figure(metrics)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def loss_curve_figure(metrics: dict):
    """Training loss per step (all teachers, and each teacher in its own colour) and the held-out loss at each
    evaluation as dots in that teacher's colour: one colour per teacher throughout, also across resumes."""
    train = metrics.get("train", [])
    evals = metrics.get("eval", [])
    names = sorted({k[5:] for r in train for k in r if k.startswith("loss/")}
                   | {t for e in evals for t, v in e.items() if isinstance(v, dict) and "loss" in v})
    colour = {t: f"C{i % 10}" for i, t in enumerate(names)}
    fig, ax = plt.subplots(figsize=(7, 4))
    if train and len(names) == 1:  # the mean is that teacher's loss: one line, in its colour
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], color=colour[names[0]], lw=1.2,
                label=f"train, {names[0]}")
    elif train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], color="black", lw=1.5,
                label="train, mean over teachers")
        for t in names:
            pts = [(r["step"], r[f"loss/{t}"]) for r in train if f"loss/{t}" in r]
            if pts:
                ax.plot(*zip(*pts), color=colour[t], lw=0.8, alpha=0.7, label=f"train, {t}")
    for t in names:
        pts = [(e["step"], e[t]["loss"]) for e in evals if isinstance(e.get(t), dict) and "loss" in e[t]]
        if pts:
            ax.plot(*zip(*pts), "o", color=colour[t], ms=6, label=f"held-out, {t}")
    if ax.lines:
        ax.legend(fontsize=8)
    ax.set_xlabel("step")
    ax.set_ylabel("loss: 0.5(1-cos) + 0.5 smooth-L1 (unitless)")
    ax.set_title(f"distillation loss ({len(names)} teacher{'s' * (len(names) != 1)})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def pca_rgb(features: "list[np.ndarray]") -> "list[np.ndarray]":
    """Project [h, w, C] feature maps of several images onto their joint top-3 principal components, scaled to
    [0, 1] per component (the DUNE paper's Fig. 2 view)."""
    import numpy as np

    flat = np.concatenate([f.reshape(-1, f.shape[-1]) for f in features]).astype(np.float64)
    mean = flat.mean(axis=0)
    _, _, vt = np.linalg.svd(flat - mean, full_matrices=False)
    proj = (flat - mean) @ vt[:3].T
    lo, hi = np.percentile(proj, 1, axis=0), np.percentile(proj, 99, axis=0)
    proj = np.clip((proj - lo) / np.maximum(hi - lo, 1e-12), 0, 1)
    out, start = [], 0
    for f in features:
        n = f.shape[0] * f.shape[1]
        out.append(proj[start:start + n].reshape(f.shape[0], f.shape[1], 3))
        start += n
    return out


def student_features(checkpoint: str | Path, images: "np.ndarray") -> "np.ndarray":
    """Patch tokens of a trained student's encoder (registers dropped) for uint8 images [B, H, W, 3]."""
    import torch

    from distillkit.images import images_to_input
    from distillkit.training.dune.evaluate import load_dune_student

    model, _ = load_dune_student(checkpoint)
    with torch.no_grad():
        tokens = model.encode(images_to_input(torch.from_numpy(images), torch.device("cpu")))[:, 1:]
    h, w = model.grid_hw
    return tokens.reshape(len(images), h, w, -1).numpy()


def pca_figure(store: str, out: str | Path, checkpoint: str | None = None, n_images: int = 4,
               storage_options: dict | None = None) -> Path:
    """A grid: one row per image; columns = the image, each teacher's PCA, and the student's (if a checkpoint)."""
    import numpy as np

    from distillkit.store import rowbits
    from distillkit.store.reader import StoreSource

    src = StoreSource(store, None, storage_options)
    rows = rowbits.first(src.usable_bits("val"), src.n, n_images)
    if len(rows) < n_images:  # few held-out samples: fill with training ones
        rows = np.concatenate([rows, rowbits.first(src.usable_bits("train"), src.n, n_images - len(rows))])
    rows = np.sort(rows)
    ids = src.ids_at(rows)
    images = np.stack([src.read("samples/image", r, r + 1)[0] for r in rows])
    columns = {t: pca_rgb([src.read(paths.patch(t), r, r + 1)[0].astype(np.float32) for r in rows])
               for t in src.teachers}
    if checkpoint:
        columns["student"] = pca_rgb(list(student_features(checkpoint, images)))
    ncol = 1 + len(columns)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(2.2 * ncol, 2.2 * len(rows)), squeeze=False)
    for i in range(len(rows)):
        axes[i][0].imshow(images[i])
        axes[i][0].set_ylabel(ids[i][:24], fontsize=7)
        for j, (name, maps) in enumerate(columns.items(), start=1):
            axes[i][j].imshow(maps[i], interpolation="nearest")
            if i == 0:
                axes[i][j].set_title(name, fontsize=8)
        if i == 0:
            axes[i][0].set_title("image", fontsize=8)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("patch features: top-3 principal components as RGB\n(fitted per column over these images; "
                 "similar colour = similar feature)", fontsize=8)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
