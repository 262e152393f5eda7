"""`train-student`: stream a store into a DUNE-style student, or (``task: pointmap``) train one scene-specific
pointmap student per scene of a DUSt3R scene store (one task per scene); metrics as artifacts."""

from __future__ import annotations

import distillkit_flows  # noqa: F401  (environment defaults before prefect)
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, \
    update_progress_artifact
from prefect.cache_policies import NO_CACHE

from distillkit.training.dune.config import TrainConfig

from distillkit.training.tasks import train_config_model
from distillkit.training.pointmap.config import PointmapJobConfig
from distillkit.training.pointmap.job import job_scenes, train_scene, write_summary
from distillkit.training.dune.trainer import train
from distillkit_flows.common import resolve_config


def _progress_reporter(description: str):
    """An on_step callback that moves a progress artifact and logs about 20 times per run."""
    log = get_run_logger()
    progress_id = create_progress_artifact(0.0, description=description)
    every = {"n": 0}

    def on_step(step: int, total: int, rec: dict) -> None:
        if step == total or step - every["n"] >= max(total // 20, 1):
            every["n"] = step
            update_progress_artifact(progress_id, progress=100.0 * step / total)
            log.info("step %d/%d loss %.4f lr %.2e", step, total, rec["loss"], rec["lr"])

    return on_step


@task(name="train", cache_policy=NO_CACHE)
def run_training(cfg: TrainConfig) -> dict:
    return train(cfg, on_step=_progress_reporter(f"training steps ({cfg.out_dir})"))


@task(name="train-scene", cache_policy=NO_CACHE, task_run_name="train-{scene}")
def run_scene(job: PointmapJobConfig, scene: str) -> dict:
    result, row = train_scene(job, scene, _progress_reporter(f"{scene}: training steps"))
    get_run_logger().info("%s: held-out mean L2 %s (%s of extent), %s%% of frames within 10 cm/10 deg, %.0f s",
                          scene, row["mean_l2"], row["mean_l2_over_extent"], row["pct_10cm_10deg"], row["train_s"])
    return row


def _train_pointmap(job: PointmapJobConfig) -> dict:
    rows = []
    for scene in job_scenes(job):  # one scene after another: one device
        rows.append(run_scene(job, scene))
        summary_json, summary_csv = write_summary(rows, job.out_dir)  # after each scene: a failure keeps the rest
    create_table_artifact(key="pointmap-students", table=[{k: v for k, v in r.items() if k != "checkpoint"}
                                                          for r in rows],
                          description=f"{job.student.kind} students on {job.store}: held-out mean L2 (world units, "
                                      f"/ extent) and PnP pose accuracy")
    create_markdown_artifact(key="pointmap-result", markdown=(
        f"{len(rows)} scene(s), student **{job.student.kind}**.\n\n* summary: `{summary_json}`, `{summary_csv}`\n"
        + "".join(f"* {r['scene']}: `{r['checkpoint']}`\n" for r in rows)))
    return {"task": "pointmap", "rows": rows, "summary_json": str(summary_json), "summary_csv": str(summary_csv)}


@flow(name="train-student", log_prints=True)
def train_student(config: dict | TrainConfig | PointmapJobConfig | None = None, config_file: str | None = None,
                  overrides: dict | None = None) -> dict:
    """Train (or resume) a student from cached teacher stores, or pointmap students (``task: pointmap``)."""
    cfg = resolve_config(train_config_model, config, config_file, overrides)
    if isinstance(cfg, PointmapJobConfig):
        return _train_pointmap(cfg)
    result = run_training(cfg)
    rows = [{"teacher": t, **{k: round(v, 5) if isinstance(v, float) else v for k, v in m.items()}}
            for t, m in result["final_eval"].items() if isinstance(m, dict)]
    if rows:
        create_table_artifact(key="student-eval", table=rows, description="held-out metrics per teacher")
    create_markdown_artifact(key="student-result", markdown=(
        f"Trained **{result['steps']}** steps; loss {result['first_loss']:.4f} → {result['last_loss']:.4f}.\n\n"
        f"* checkpoint: `{result['checkpoint']}`\n* metrics: `{result['metrics']}`\n"
        f"* loss curve: `{result['loss_curve']}`"))
    return result


if __name__ == "__main__":
    import sys

    train_student(config_file=sys.argv[1])
