"""The pointmap task's plugs for the registry (`distillkit.training.tasks`): `distillkit train`'s options as
config overrides, the runner (one student per scene), the report of a finished run and the checkpoint loader. Torch
loads only when one of them runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distillkit.training.pointmap.config import STUDENT_PRESETS, TRAIN_PRESETS, PointmapJobConfig
from distillkit.training.tasks import Report, Unit

COLUMNS = ("scene", "size_mb", "steps", "train_s", "mean_l2", "mean_l2_over_extent", "pct_10cm_10deg",
           "median_t_cm", "median_r_deg")  # what `distillkit train` prints of each scene's summary row


def overrides(stores: list[str], given: dict[str, Any], common: dict[str, Any]) -> dict[str, Any]:
    if len(stores) > 1:
        raise ValueError("--task pointmap reads one scene store: give --store once")
    return {"store": (stores or [None])[0], "scenes": given["scene"] or None, "image_size": given["image_size"],
            "max_minutes": given["max_minutes"], **student_overrides(given["student"], common)}


def student_overrides(student: str | None, given: dict) -> dict:
    """--student as config overrides. It replaces the config file's whole `student:` block: a student preset
    (small_cnn, paper_vit, ...), a kind (cnn | mobilenet | vit) with default fields, or a training preset
    (paper_vit_best) whose student and training fields beat the file's (options given on the command line win)."""
    if student is None:
        return {}
    if student in TRAIN_PRESETS:
        preset = {k: v for k, v in TRAIN_PRESETS[student].items() if given.get(k) is None}
        return {"preset": student, **preset}
    return {"student": {"preset": student} if student in STUDENT_PRESETS else {"kind": student}}


def run(job: PointmapJobConfig, unit: Unit) -> dict:
    from distillkit.training.pointmap.job import train_pointmap_scenes

    return train_pointmap_scenes(job, unit)


def report(job: PointmapJobConfig, result: dict) -> Report:
    rows = result["rows"]
    this, total = sum(r.get("steps_this_run") or 0 for r in rows), sum(r.get("steps") or 0 for r in rows)
    resumed = f" ({total} in all: resumed)" if this != total else ""
    return Report(f"{len(rows)} scene(s), student {job.student.kind}; trained {this} steps{resumed}",
                  f"{job.student.kind} students on {job.store}: held-out mean L2 (world units, / extent) and PnP pose "
                  f"accuracy", [{k: v for k, v in r.items() if k != "checkpoint"} for r in rows], COLUMNS,
                  {"summary": result["summary_json"], "summary csv": result["summary_csv"],
                   **{f"{r['scene']} checkpoint": r["checkpoint"] for r in rows}}, "pointmap-students",
                  "pointmap-result")


def load_student(checkpoint: str | Path, device: Any = "cpu"):
    from distillkit.training.pointmap.evaluate import load_pointmap_student

    return load_pointmap_student(checkpoint, device)[0]
