"""`retrain-student`: scheduled; trains a new version only when a store's content changed, records lineage."""

from __future__ import annotations

import distillkit_flows  # noqa: F401  (environment defaults before prefect)
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from distillkit.training.dune.config import TrainConfig
from distillkit.training.dune.retrain import retrain
from distillkit_flows.common import resolve_config


@task(name="retrain", cache_policy=NO_CACHE)
def run_retrain(cfg: TrainConfig) -> dict:
    return retrain(cfg)


@flow(name="retrain-student", log_prints=True)
def retrain_student(config: TrainConfig | None = None, config_file: str | None = None,
                    overrides: dict | None = None) -> dict:
    """Fine-tune from the latest checkpoint if any store changed since the last run; otherwise a no-op."""
    cfg = resolve_config(TrainConfig, config, config_file, overrides)
    result = run_retrain(cfg)
    print(result["message"])
    create_markdown_artifact(key="retrain-result", markdown=f"**{result['message']}**\n\nlineage: "
                             f"`{cfg.out_dir}/lineage.json`")
    return result
