"""Optimiser and learning-rate schedule shared by both training tasks: AdamW with the usual no-decay groups, and
one cosine decay after a linear warm-up.

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
    register tokens get no weight decay. The fused kernel (one pass over all parameters) where torch has it for
    the parameters' device, else the foreach one: the per-parameter loop costs a kernel launch per tensor."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(NO_DECAY_SUFFIXES) else decay).append(p)
    kind = FUSED if fused_ok(decay + no_decay) else {"foreach": True}
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=betas, **kind)


FUSED = {"fused": True}


def fused_ok(params: list[torch.Tensor]) -> bool:
    """Whether torch's fused AdamW takes these parameters (floating, on one device type it has the kernel for)."""
    try:  # torch's own list; private, so a torch without it gets the foreach kernel instead
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:
        return False
    kinds = {p.device.type for p in params}
    return (len(kinds) == 1 and kinds <= set(_get_fused_kernels_supported_devices())
            and all(p.is_floating_point() for p in params))


def cosine(q: float, hi: float, lo: float) -> float:
    """Half a cosine from `hi` (q = 0) down to `lo` (q >= 1): the decay both schedules share."""
    return lo + (hi - lo) * 0.5 * (1 + math.cos(math.pi * min(max(q, 0.0), 1.0)))


def step_schedule(opt: torch.optim.Optimizer, lr: float, min_lr: float, warmup_fraction: float,
                  total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """By optimiser step (DUNE): linear warm-up over W = round(warmup_fraction * total) steps (step s at (s + 1) / W
    of lr), then the cosine down to min_lr at the last step."""
    warmup = int(round(warmup_fraction * total_steps))
    floor = min_lr / lr

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return cosine((step - warmup) / max(total_steps - warmup, 1), 1.0, floor)

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


class ProgressSchedule:
    """Warm-up then `cosine`, driven by training *progress* in [0, 1] (the pointmap trainer: the larger of step / total
    and elapsed / time budget). `update(progress)` sets every group's lr and returns it."""

    def __init__(self, opt: torch.optim.Optimizer, lr: float, min_lr: float, warmup: float):
        self.opt, self.lr, self.min_lr, self.warmup = opt, lr, min_lr, warmup
        self.progress = 0.0
        self.update(0.0)

    def update(self, progress: float) -> float:
        self.progress = p = min(max(progress, 0.0), 1.0)
        if p < self.warmup:
            lr = self.lr * max(p / self.warmup, 0.01)
        else:
            lr = cosine((p - self.warmup) / max(1 - self.warmup, 1e-12), self.lr, self.min_lr)
        for g in self.opt.param_groups:
            g["lr"] = lr
        return lr

    def state_dict(self) -> dict:
        return {"progress": self.progress}

    def load_state_dict(self, state: dict) -> None:
        self.update(state["progress"])
