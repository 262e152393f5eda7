"""Fields every training task takes with the same meaning, constraints and default, declared once; each task's
config inherits them, so the YAML stays flat (``seed: 1``, not ``run: {seed: 1}``).

The other shared names stay with each task because their defaults differ (``lr``, ``min_lr``, ``weight_decay``,
``warmup_fraction``, ``epochs``, ``batch_size``, ``ckpt_every``), and ``eval_every`` because its unit does (DUNE:
optimiser steps; pointmap: epochs).
"""

from __future__ import annotations

from pydantic import Field

from distillkit.config.common import Strict


class RunFields(Strict):
    """Where a run writes, how it starts (fresh, resumed, from other weights), how long it runs at most, and the
    settings of its steps that every task shares."""

    out_dir: str = Field(description="where checkpoint-last.pt, metrics.json and loss_curve.png go")
    max_steps: int | None = Field(default=None, ge=1, description="stop after this many steps (overrides epochs)")
    resume: bool = Field(default=True, description="continue from out_dir/checkpoint-last.pt if present")
    init_from: str | None = Field(default=None, description="start from this checkpoint's weights (a checkpoint of "
                                  "the same task; the tensors whose names and shapes match: fine-tuning, or "
                                  "head-only training on a trained encoder)")
    grad_clip: float = Field(default=1.0, ge=0, description="gradient norm clipping; 0 disables")
    color_jitter: float = Field(default=0.0, ge=0.0, le=1.0, description="photometric jitter strength of the "
                                "student's input images only (the targets stay fixed)")
    seed: int = 0
    device: str = "auto"
