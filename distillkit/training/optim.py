"""Optimiser and learning-rate schedule shared by both training tasks: AdamW with the usual no-decay groups, and
one warm-up + cosine formula (`warmup_cosine`) driven by training progress in [0, 1].

The DUNE task steps it by optimiser step (`step_schedule`, a LambdaLR: its state_dict is the scheduler entry of
a DUNE checkpoint); the pointmap task by progress = max(step / total, elapsed / time budget) (`ProgressSchedule`),
so a wall-clock-limited run anneals too.
"""

from __future__ import annotations

import math

import torch

NO_DECAY_SUFFIXES = ("pos_embed", "cls_token", "reg_token")


def adamw(model: torch.nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.99)) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; biases, norms (every tensor of <= 1 dim) and position / class /
    register tokens get no weight decay."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(NO_DECAY_SUFFIXES) else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=betas)


def warmup_cosine(progress: float, warmup: float, floor: float, ramp_min: float = 0.01) -> float:
    """LR factor (x the base lr) at training progress in [0, 1]: linear warm-up over the first `warmup` fraction
    (progress / warmup, at least `ramp_min`), then a cosine from 1 down to `floor` (= min_lr / lr) at progress 1."""
    p = min(max(progress, 0.0), 1.0)
    if p < warmup:
        return max(p / warmup, ramp_min)
    q = (p - warmup) / max(1 - warmup, 1e-12)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * q))


def step_schedule(opt: torch.optim.Optimizer, lr: float, min_lr: float, warmup_fraction: float,
                  total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """`warmup_cosine` by optimiser step: step s runs at progress s / total, with the warm-up rounded to whole
    steps (W = round(warmup_fraction * total)).

    Against the DUNE trainer's earlier own formula: the cosine part (steps >= W) gives the same values; the warm-up
    ramp moves one step later (step s < W now runs at max(s / W, 1%) of lr, before at (s + 1) / W)."""
    warmup = round(warmup_fraction * total_steps) / max(total_steps, 1)
    floor = min_lr / lr
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: warmup_cosine(step / max(total_steps, 1), warmup,
                                                                             floor))


class ProgressSchedule:
    """`warmup_cosine` driven by training *progress* in [0, 1] (the pointmap trainer: the larger of step / total
    and elapsed / time budget). `update(progress)` sets every group's lr and returns it."""

    def __init__(self, opt: torch.optim.Optimizer, lr: float, min_lr: float, warmup: float):
        self.opt, self.lr, self.min_lr, self.warmup = opt, lr, min_lr, warmup
        self.progress = 0.0
        self.update(0.0)

    def update(self, progress: float) -> float:
        self.progress = min(max(progress, 0.0), 1.0)
        lr = self.lr * warmup_cosine(self.progress, self.warmup, self.min_lr / self.lr)
        for g in self.opt.param_groups:
            g["lr"] = lr
        return lr

    def state_dict(self) -> dict:
        return {"progress": self.progress}

    def load_state_dict(self, state: dict) -> None:
        self.update(state["progress"])
