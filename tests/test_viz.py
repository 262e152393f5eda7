"""Figures users look at: the PCA feature view (DUNE Fig. 2) and the loss curve."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import BIN, REPO
from distillkit.training.dune.plots import pca_rgb


def test_pca_rgb_recovers_a_planted_3d_structure():
    rng = np.random.default_rng(0)
    h, w, c = 8, 8, 32
    codes = rng.standard_normal((3, c)) * 10
    weights = rng.random((2, h, w, 3))
    feats = [np.einsum("hwk,kc->hwc", weights[i], codes) + rng.standard_normal((h, w, c)) * 1e-3 for i in range(2)]
    rgb = pca_rgb(feats)
    assert rgb[0].shape == (h, w, 3) and 0 <= rgb[0].min() and rgb[0].max() <= 1
    # the 3 components span the planted weights: a linear fit from weights to colours is (nearly) exact
    x = np.concatenate([wt.reshape(-1, 3) for wt in weights])
    y = np.concatenate([r.reshape(-1, 3) for r in rgb])
    x1 = np.hstack([x, np.ones((len(x), 1))])
    coef, res, *_ = np.linalg.lstsq(x1, y, rcond=None)
    clipped = (y <= 0) | (y >= 1)  # percentile clipping makes a few pixels non-linear
    assert np.abs(x1 @ coef - y)[~clipped].mean() < 0.05


def test_show_pca_cli(cached_store, tmp_path):
    from distillkit.training.dune.config import TrainConfig
    from distillkit.training.dune.trainer import train

    res = train(TrainConfig(stores=[str(cached_store)], out_dir=str(tmp_path / "s"), max_steps=2, num_workers=0,
                            batch_size=3, student={"preset": "custom", "embed_dim": 32, "depth": 1, "num_heads": 2}))
    out = tmp_path / "pca.png"
    proc = subprocess.run([str(BIN / "distillkit"), "show", str(cached_store), "--checkpoint",
                           res["checkpoint"], "--n", "3", "--out", str(out)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    img = np.asarray(Image.open(out))
    assert img.shape[0] > 200 and img.shape[1] > 300  # 3 rows x (image, teacher, student)
    assert img[..., :3].std() > 10  # not a blank canvas


def _scalar_images(fig):
    """(axes, image) of every colour-mapped panel of `fig` (RGB panels have no norm range to explain)."""
    return [(ax, im) for ax in fig.axes for im in ax.images if im.get_array().ndim == 2]


def test_scene_pictures_explain_themselves(oracle_scene_store, tmp_path, monkeypatch):
    """Every panel of `show --scene` has a title; every colour-mapped one a colour bar naming its unit; the
    pointmap's colours are keyed by the scene box in metres (the oracle scene is aligned to metric poses)."""
    from distillkit.scenes import figures
    from distillkit.scenes.export import show_scene

    drawn = []
    real_save = figures.save
    monkeypatch.setattr(figures, "save", lambda fig, path, dpi=100: (drawn.append(fig), real_save(fig, path))[1])
    res = show_scene(str(oracle_scene_store), tmp_path, "office_wide", n_frames=2)
    assert len(drawn) == len(res["files"]) + 1 and all(Path(f).is_file() for f in res["files"])
    for fig in drawn:
        colorbars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
        panels = [ax for ax in fig.axes if ax not in colorbars]
        assert panels and all(ax.get_title() for ax in panels)
        scalar = _scalar_images(fig)
        assert len(colorbars) == len([1 for ax, im in scalar if ax not in colorbars])
        for bar in colorbars:
            assert re.search(r"\((m|m, the dataset's|>= 1, unitless)\)", bar.get_ylabel()), bar.get_ylabel()
        for ax in panels:
            rgb = [im for im in ax.images if im.get_array().ndim == 3]
            if rgb and "pointmap" in ax.get_title():
                assert re.search(r"R: x .* G: y .* B: z .*\(m\)", ax.get_xlabel())
    overview = drawn[-1]
    assert "2 of" in overview._suptitle.get_text() and "in m" in overview._suptitle.get_text()


def test_loss_curve_colours_match_the_legend_across_a_resume():
    """One colour per teacher for its training line and all its held-out dots (a resume appends evals), and the
    legend shows exactly what is drawn."""
    from matplotlib.colors import to_hex

    from distillkit.training.dune.plots import loss_curve_figure

    teachers = ["dinov2", "mast3r"]
    train = [{"step": s, "loss": 1.0 / s, **{f"loss/{t}": (i + 1.0) / s for i, t in enumerate(teachers)}}
             for s in range(1, 21)]
    evals = [{"step": s, **{t: {"loss": 0.5 / s} for t in teachers}} for s in (10, 20)]  # 10: first run, 20: resumed
    ax = loss_curve_figure({"train": train, "eval": evals}).axes[0]
    drawn = {line.get_label(): to_hex(line.get_color()) for line in ax.lines}
    legend = {text.get_text(): to_hex(handle.get_color())
              for text, handle in zip(ax.get_legend().get_texts(), ax.get_legend().legend_handles)}
    assert legend == drawn and len(drawn) == 1 + 2 * len(teachers)
    for t in teachers:
        assert drawn[f"train, {t}"] == drawn[f"held-out, {t}"]
        dots = next(line for line in ax.lines if line.get_label() == f"held-out, {t}")
        assert list(dots.get_xdata()) == [10, 20]  # both evaluations, one handle, one colour
    assert len(set(drawn.values())) == 1 + len(teachers)  # the mean (black) + one per teacher
    assert ax.get_xlabel() == "step" and "loss" in ax.get_ylabel() and ax.get_title()
