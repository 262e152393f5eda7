"""`distillkit train --task pointmap`: one scene-specific pointmap student per scene of a DUSt3R scene store.

Each scene trains into ``<out_dir>/<scene>/`` (resumable on its own); after each scene the job merges its row
into ``<out_dir>/summary.json`` and ``summary.csv``: one row per scene with the held-out mean L2, its ratio to the
scene extent, PnP pose accuracy, model size and training time.
"""

from __future__ import annotations

import csv
import json
import logging
from functools import partial
from pathlib import Path

from distillkit.training.pointmap.config import PointmapJobConfig
from distillkit.scenes.data import SceneData, aligned_scenes
from distillkit.training.pointmap.trainer import train_pointmap_student
from distillkit.training.tasks import OnStep, Unit, in_process

log = logging.getLogger("distillkit")

SUMMARY_COLUMNS = ("scene", "kind", "size_mb", "frames_train", "frames_test", "steps", "steps_this_run", "epochs",
                   "train_s",
                   "extent", "mean_l2", "mean_l2_over_extent", "pct_5cm_5deg", "pct_10cm_10deg", "median_t_cm",
                   "median_r_deg", "pose_reference", "checkpoint")


def job_scenes(job: PointmapJobConfig) -> list[str]:
    """The scenes a job trains on: the ones asked for (each must be aligned) or every aligned scene."""
    aligned = aligned_scenes(job.store, job.storage_options)
    if job.scenes is None:
        if not aligned:
            raise ValueError(f"{job.store}: no aligned scene (run `distillkit cache-scenes` first)")
        return aligned
    missing = [s for s in job.scenes if s not in aligned]
    if missing:
        raise ValueError(f"{job.store}: scenes {missing} are not aligned scenes of the store (aligned: {aligned})")
    return list(job.scenes)


def summary_row(result: dict, data: SceneData, kind: str) -> dict:
    ev = result["final_eval"]
    row = {"scene": result["scene"], "kind": kind, "size_mb": result["model"].get("size_mb"),
           "frames_train": len(data.train_idx), "frames_test": len(data.test_idx), "steps": result["steps"],
           "steps_this_run": result.get("steps_this_run", result["steps"]),
           "epochs": result["epochs"], "train_s": round(result["train_s"], 1), "extent": round(result["extent"], 4),
           "pose_reference": ev.get("pose_reference", "none"), "checkpoint": result["checkpoint"]}
    row.update({k: ev.get(k) for k in SUMMARY_COLUMNS if k in ev})
    return {k: row.get(k) for k in SUMMARY_COLUMNS}


def write_summary(rows: list[dict], out_dir: str | Path) -> tuple[Path, Path]:
    """Merge `rows` into ``summary.json``/``.csv`` by scene: earlier runs' other scenes are kept, a scene trained
    again replaces its row."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    old = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else []
    new = {r["scene"] for r in rows}
    rows = [r for r in old if r.get("scene") not in new] + list(rows)
    (out / "summary.json").write_text(json.dumps(rows, indent=1))
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return out / "summary.json", out / "summary.csv"


def train_scene(job: PointmapJobConfig, scene: str, on_step: OnStep | None = None) -> dict:
    """Train one scene's student; returns its summary row."""
    data = SceneData.from_store(job.store, scene, job.storage_options)
    for note in data.notes:
        log.info("%s: %s", scene, note)
    row = summary_row(train_pointmap_student(job.scene_config(scene), data, on_step=on_step), data, job.student.kind)
    log.info("%s: held-out mean L2 %s (%s of extent), %s%% of frames within 10 cm/10 deg, %.0f s", scene,
             row["mean_l2"], row["mean_l2_over_extent"], row["pct_10cm_10deg"], row["train_s"])
    return row


def train_pointmap_scenes(job: PointmapJobConfig, unit: Unit = in_process) -> dict:
    """Train every scene of the job in turn (one device), each through `unit`; the summary files are rewritten
    after each scene, so a failure keeps the scenes before it."""
    rows = []
    for scene in job_scenes(job):
        rows.append(unit(scene, partial(train_scene, job, scene)))
        summary_json, summary_csv = write_summary(rows, job.out_dir)
    return {"task": "pointmap", "rows": rows, "summary_json": str(summary_json), "summary_csv": str(summary_csv)}
