"""`train-student`: train the students of any registered task (``task:``, default dune: a DUNE-style student from
feature stores; pointmap: one scene-specific student per scene of a scene store). Each student is a Prefect task;
the task's report becomes the table and result artifacts."""

from __future__ import annotations

from typing import Callable, Optional, Union

import distillkit_flows  # noqa: F401  (environment defaults before prefect)
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, \
    update_progress_artifact
from prefect.cache_policies import NO_CACHE

from distillkit.training.tasks import TASKS, OnStep, get_task, train_config_model
from distillkit_flows.common import resolve_config

TaskConfig = Union[tuple(t.config for t in TASKS.values())]  # the flow's parameter schema offers every task's config


def _progress_reporter(description: str) -> OnStep:
    """An on_step callback that moves a progress artifact about 20 times per run (the trainer's own progress lines,
    with loss, images/s and ETA, reach the run's log through the distillkit logger)."""
    progress_id = create_progress_artifact(0.0, description=description)
    every = {"n": 0}

    def on_step(step: int, total: int, rec: dict) -> None:
        if step == total or step - every["n"] >= max(total // 20, 1):
            every["n"] = step
            update_progress_artifact(progress_id, progress=100.0 * step / total)

    return on_step


@task(name="train", cache_policy=NO_CACHE)
def train_one(name: str, train: Callable[[Optional[OnStep]], dict]) -> dict:
    return train(_progress_reporter(f"{name}: training steps"))


def _unit(name: str, train: Callable[[Optional[OnStep]], dict]) -> dict:
    """The flow's `Unit`: one Prefect task per student (one after another: one device)."""
    return train_one.with_options(task_run_name=f"train-{name}")(name, train)


@flow(name="train-student", log_prints=True)
def train_student(config: dict | TaskConfig | None = None, config_file: str | None = None,
                  overrides: dict | None = None) -> dict:
    """Train (or resume) the students of the config's task (``task:``; default dune); artifacts from its report."""
    cfg = resolve_config(train_config_model, config, config_file, overrides)
    chosen = get_task(getattr(cfg, "task", None))
    result = chosen.run(cfg, _unit)
    report = chosen.report(cfg, result)
    if report.rows:
        create_table_artifact(key=report.table_key, table=report.rows, description=report.title)
    create_markdown_artifact(key=report.result_key, markdown=f"{report.headline}\n\n" + "".join(
        f"* {label}: `{path}`\n" for label, path in report.files.items()))
    # the last log line: what `prefect deployment run ... --watch` shows of the result
    get_run_logger().info("%s; %s", report.headline, "; ".join(f"{k}: {v}" for k, v in report.files.items()))
    return result


if __name__ == "__main__":
    import sys

    train_student(config_file=sys.argv[1])
