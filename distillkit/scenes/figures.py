"""Pictures of a scene store that explain themselves (`distillkit show --scene`): every panel has a title, every
scalar map a colour bar that names its quantity and unit, and the pointmap's xyz colours state the box they span.

Depth and pointmaps are in the scene's world unit: metres when the scene was aligned to the dataset's own poses
(12-Scenes, 7-Scenes, the synthetic scenes), otherwise DUSt3R's arbitrary scale, and the labels say which.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distillkit_schemas.scenes import read_alignment, read_scene_info


@dataclass
class Panel:
    """One picture: a scalar map (drawn with `cmap` between `lo` and `hi`, colour bar labelled `label`) or an RGB
    image (`cmap` None; `label` says what the colours mean)."""

    title: str
    data: np.ndarray
    label: str = ""
    cmap: str | None = None
    lo: float = 0.0
    hi: float = 1.0


def world_unit(group, scene: str) -> str:
    """'m' when the scene was aligned with the dataset's metric poses; else DUSt3R's scale, said as such."""
    rec, info = read_alignment(group, scene), read_scene_info(group, scene)
    metric = rec is not None and rec.used_known_poses and info.layout in ("12scenes", "7scenes")
    return "m" if metric else "world units, DUSt3R scale"


def pointmap_rgb(pts: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """XYZ -> RGB with a scene-wide box (same colour = same place in every frame); non-finite points black."""
    t = np.clip((pts - lo) / np.maximum(hi - lo, 1e-12), 0, 1)
    return (np.nan_to_num(t) * 255).astype(np.uint8)


def box_label(lo: np.ndarray, hi: np.ndarray, unit: str) -> str:
    """What the pointmap colours mean: red = x, green = y, blue = z, each over the scene box."""
    return (f"R: x {lo[0]:.2f}..{hi[0]:.2f}, G: y {lo[1]:.2f}..{hi[1]:.2f}, B: z {lo[2]:.2f}..{hi[2]:.2f} "
            f"({unit})")


def value_range(values: np.ndarray, lo_pct: float = 2, hi_pct: float = 98) -> tuple[float, float]:
    """A colour range over the finite values; a constant map gets a small range around its value (so it draws
    mid-scale and its colour bar shows the value) instead of a degenerate one."""
    v = values[np.isfinite(values)]
    if not v.size:
        return 0.0, 1.0
    lo, hi = (float(x) for x in np.percentile(v, [lo_pct, hi_pct]))
    if hi - lo <= 1e-6 * max(1.0, abs(hi)):
        pad = max(abs(lo) * 0.05, 1e-3)
        return lo - pad, hi + pad
    return lo, hi


def _draw(ax, fig, p: Panel, colorbar: bool = True) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(p.title, fontsize=8)
    if p.cmap is None:
        ax.imshow(p.data)
        if p.label:
            ax.set_xlabel(p.label, fontsize=6)
        return
    im = ax.imshow(np.where(np.isfinite(p.data), p.data, np.nan), cmap=p.cmap, vmin=p.lo, vmax=p.hi)
    if colorbar:
        bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        bar.set_label(p.label, fontsize=7)
        bar.ax.tick_params(labelsize=6)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: never a window, never a display needed
    import matplotlib.pyplot as plt

    return plt


def panel_figure(p: Panel, title: str):
    """One panel as its own figure (the per-frame PNGs): the panel, its colour bar or colour key, a title."""
    plt = _pyplot()

    h, w = p.data.shape[:2]
    fig, ax = plt.subplots(figsize=(max(4.4, 3.2 * w / h + (1.0 if p.cmap else 0)), 3.6), layout="constrained")
    _draw(ax, fig, Panel(title, p.data, p.label, p.cmap, p.lo, p.hi))
    return fig


def grid_figure(rows: list[list[Panel]], row_names: list[str], title: str):
    """Rows of panels (one row per frame) with a title per panel and a colour bar beside every scalar map."""
    plt = _pyplot()

    n, m = len(rows), max(len(r) for r in rows)
    h, w = rows[0][0].data.shape[:2]
    fig, axes = plt.subplots(n, m, figsize=(m * 2.6 * w / h + 1.0, n * 2.3 + 0.7), squeeze=False,
                             layout="constrained")
    for r, panels in enumerate(rows):
        for c in range(m):
            if c >= len(panels):
                axes[r, c].set_axis_off()
                continue
            _draw(axes[r, c], fig, panels[c])
        axes[r, 0].set_ylabel(row_names[r], fontsize=8)
    fig.suptitle(title, fontsize=9)
    return fig


def save(fig, path: str | Path, dpi: int = 100) -> str:
    fig.savefig(path, dpi=dpi)
    _pyplot().close(fig)
    return str(path)
