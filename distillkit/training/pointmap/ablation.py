"""Ablations of pointmap students (`ablate-students` flow): expand a grid of config overrides into runs, one result
row per run and scene, the CSV table and the summary plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from distillkit.training.pointmap.config import PointmapTrainConfig


def _set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
    d[parts[-1]] = value


def expand_ablation(base: dict, grid: dict[str, list], runs: list[dict], out_dir: str) -> list[dict]:
    """The runs of an ablation: the cartesian product of `grid` (dotted keys) over `base`, then the explicit `runs`.
    Runs whose *effective* configuration is the same (e.g. a ViT hyper-parameter varied for a CNN) are kept once.
    Each entry: {"run": id, "label": "k=v ...", "overrides": {...}, "config": PointmapTrainConfig fields}."""
    import copy
    import itertools

    combos = [dict(zip(grid, vals)) for vals in itertools.product(*grid.values())] if grid else []
    combos += [dict(r) for r in runs]
    seen: dict[str, int] = {}
    out = []
    for ov in combos:
        d = copy.deepcopy(base)
        d.setdefault("out_dir", out_dir)
        for k, v in ov.items():
            _set_dotted(d, k, v)
        cfg = PointmapTrainConfig.model_validate(d)
        key = json.dumps({**cfg.model_dump(mode="json", exclude={"out_dir", "student"}),
                          "student": cfg.student.relevant()}, sort_keys=True, default=str)
        if key in seen:
            continue
        seen[key] = len(out)
        label = " ".join(f"{k.split('.')[-1]}={v}" for k, v in ov.items()) or "base"
        slug = "".join(c if c.isalnum() or c in "-_=." else "_" for c in label.replace(" ", "_"))[:80]
        run_id = f"r{len(out):02d}-{slug}"
        d["out_dir"] = str(Path(out_dir) / run_id)
        out.append({"run": run_id, "label": label, "overrides": ov, "config": d})
    return out


ABLATION_COLUMNS = ("run", "label", "scene", "kind", "size_mb", "steps", "epochs", "train_s", "mean_l2",
                    "mean_l2_over_extent", "train_mean_l2", "pct_5cm_5deg", "pct_10cm_10deg", "median_t_cm",
                    "median_r_deg", "first_loss", "last_loss", "metrics")


def ablation_row(run: dict, result: dict) -> dict:
    ev = result["final_eval"]
    row = {"run": run["run"], "label": run["label"], "scene": result["scene"],
           "kind": run["config"].get("student", {}).get("kind") or PointmapTrainConfig.model_validate(
               run["config"]).student.kind,
           "size_mb": result["model"]["size_mb"], "steps": result["steps"], "epochs": result["epochs"],
           "train_s": round(result["train_s"], 2), "first_loss": result["first_loss"],
           "last_loss": result["last_loss"], "metrics": result["metrics"]}
    for k in ABLATION_COLUMNS:
        if k not in row:
            v = ev.get(k)
            row[k] = round(v, 6) if isinstance(v, float) else v
    return row


def write_ablation_csv(rows: list[dict], path: str | Path) -> Path:
    import csv

    path = Path(path)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(ABLATION_COLUMNS))
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k) for k in ABLATION_COLUMNS})
    return path


def plot_ablation(rows: list[dict], path: str | Path) -> Path:
    """Left: training loss vs epoch of every run (one line per run and scene). Right: held-out mean L2 per scene,
    one bar per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 4.5))
    runs = list(dict.fromkeys(r["run"] for r in rows))
    scenes = list(dict.fromkeys(r["scene"] for r in rows))
    for r in rows:
        try:
            m = json.loads(Path(r["metrics"]).read_text())
        except (OSError, ValueError):
            continue
        tr = m.get("train", [])
        a1.plot([t["epoch"] for t in tr], [t["loss"] for t in tr], lw=0.9, color=f"C{runs.index(r['run']) % 10}",
                ls=["-", "--", ":", "-."][scenes.index(r["scene"]) % 4],
                label=f"{r['label']} / {r['scene']}")
    a1.set_yscale("log")
    a1.set_xlabel("epoch")
    a1.set_ylabel("training loss")
    a1.grid(alpha=0.3)
    a1.legend(fontsize=6)
    width = 0.8 / max(len(runs), 1)
    for i, run in enumerate(runs):
        vals = [next((r["mean_l2"] for r in rows if r["run"] == run and r["scene"] == s), np.nan) for s in scenes]
        lab = next(r["label"] for r in rows if r["run"] == run)
        a2.bar(np.arange(len(scenes)) + i * width, vals, width, label=lab, color=f"C{i % 10}")
    a2.set_xticks(np.arange(len(scenes)) + 0.4 - width / 2, scenes, fontsize=8)
    a2.set_ylabel("held-out mean L2 (world units)")
    a2.set_yscale("log")
    a2.grid(alpha=0.3, axis="y")
    a2.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
