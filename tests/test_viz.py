"""Figures users look at: the PCA feature view (DUNE Fig. 2) and the loss curve."""

from __future__ import annotations

import subprocess

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
