"""`train-student`: stream a store into a DUNE-style student; metrics as artifacts."""

from __future__ import annotations

import flows  # noqa: F401  (environment defaults before prefect)
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, \
    update_progress_artifact
from prefect.cache_policies import NO_CACHE

from distillkit.config import TrainConfig
from distillkit.training.trainer import train
from flows.common import resolve_config


@task(name="train", cache_policy=NO_CACHE)
def run_training(cfg: TrainConfig) -> dict:
    log = get_run_logger()
    progress_id = create_progress_artifact(0.0, description=f"training steps ({cfg.out_dir})")
    every = {"n": 0}

    def on_step(step: int, total: int, rec: dict) -> None:
        if step == total or step - every["n"] >= max(total // 20, 1):
            every["n"] = step
            update_progress_artifact(progress_id, progress=100.0 * step / total)
            log.info("step %d/%d loss %.4f lr %.2e", step, total, rec["loss"], rec["lr"])

    return train(cfg, on_step=on_step)


@flow(name="train-student", log_prints=True)
def train_student(config: TrainConfig | None = None, config_file: str | None = None,
                   overrides: dict | None = None) -> dict:
    """Train (or resume) a student from cached teacher stores."""
    cfg = resolve_config(TrainConfig, config, config_file, overrides)
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
