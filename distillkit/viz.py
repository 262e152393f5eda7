"""Plots: training loss curves (per teacher) with held-out evaluation points."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_loss_curve(metrics: dict, path: str | Path) -> Path:
    path = Path(path)
    train = metrics.get("train", [])
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        steps = [r["step"] for r in train]
        ax.plot(steps, [r["loss"] for r in train], label="train (all teachers)", lw=1.5)
        for key in sorted(k for k in train[0] if k.startswith("loss/")):
            ax.plot(steps, [r[key] for r in train], label=f"train {key[5:]}", lw=0.8, alpha=0.7)
    for rec in metrics.get("eval", []):
        for t, v in rec.items():
            if isinstance(v, dict) and "loss" in v:
                ax.scatter([rec["step"]], [v["loss"]], marker="o", s=18, label=f"held-out {t}")
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    ax.legend(uniq.values(), uniq.keys(), fontsize=8)
    ax.set_xlabel("step")
    ax.set_ylabel("0.5(1-cos) + 0.5 smooth-L1")
    ax.set_title("distillation loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
