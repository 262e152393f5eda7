"""The DUNE task's plugs for the registry (`distillkit.training.tasks`): `distillkit train`'s options as config
overrides, the runner, the report of a finished run and the checkpoint loader. Torch loads only when one of them
runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distillkit.training.dune.config import TrainConfig
from distillkit.training.tasks import Report, Unit


def overrides(stores: list[str], given: dict[str, Any], common: dict[str, Any]) -> dict[str, Any]:
    size = {k: v for k, v in {"preset": given["preset"], "depth": given["depth"], "embed_dim": given["embed_dim"],
                              "num_heads": given["heads"]}.items() if v is not None}
    return {"stores": stores or None, "teachers": given["teacher"] or None, "student": size or None,
            "projector": given["projector"], "num_workers": given["num_workers"]}


def run(cfg: TrainConfig, unit: Unit) -> dict:
    from distillkit.training.dune.trainer import train

    return unit(cfg.out_dir, lambda on_step: train(cfg, on_step=on_step))


def report(cfg: TrainConfig, result: dict) -> Report:
    rows = [{"teacher": t, **{k: round(v, 5) if isinstance(v, float) else v for k, v in m.items()}}
            for t, m in result["final_eval"].items() if isinstance(m, dict)]
    return Report(f"trained {steps_done(result)} in {result['wall_s']:.1f} s; loss {result['first_loss']:.4f} -> "
                  f"{result['last_loss']:.4f}", "held-out metrics per teacher", rows,
                  ("teacher", "loss", "cos_patch", "cos_cls", "samples"),
                  {"checkpoint": result["checkpoint"], "metrics": result["metrics"],
                   "loss curve": result["loss_curve"]}, "student-eval", "student-result")


def steps_done(result: dict) -> str:
    """"12 steps", or for a resumed run "6 steps (120 in all, resumed at step 114)": what this run did first."""
    this, start = result.get("steps_this_run", result["steps"]), result.get("resumed_from", 0)
    return f"{this} steps" + (f" ({result['steps']} in all, resumed at step {start})" if start else "")


def load_student(checkpoint: str | Path, device: Any = "cpu"):
    from distillkit.training.dune.evaluate import load_dune_student

    return load_dune_student(checkpoint, device)[0]
