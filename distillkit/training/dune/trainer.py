"""Train a DUNE-style student by streaming cached teacher features.

Checkpoints hold the model, optimiser, scheduler, RNG states and the data position (epoch, batches consumed), so a
resumed run sees exactly the batches the uninterrupted run would have seen. Resume, checkpoints, metrics and the
loss curve are `distillkit.training.run`'s; this module holds the loop (teacher-balanced batches, data sharing,
teacher drop, gradients summed across torchrun ranks).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from distillkit.config.common import redact
from distillkit.devices import resolve_device
from distillkit.students.dune import build_student
from distillkit.training.distributed import Distributed, local_device
from distillkit.training.dune.config import TrainConfig
from distillkit.training.dune.data import GroupBatches, Teachers, build_groups, teachers_of, val_streams
from distillkit.training.dune.evaluate import evaluate, student_losses, targets, to_device
from distillkit.training.dune.normalize import TargetNorm
from distillkit.training.dune.objectives import combine, lowest_loss_drop, sharing_mask
from distillkit.training.dune.plots import plot_loss_curve
from distillkit.training.optim import adamw, step_schedule
from distillkit.training.clock import StepClock, phase
from distillkit.training.run import Run
from distillkit.training.tasks import OnStep

log = logging.getLogger("distillkit")

DATA_POSITION_KEYS = ("seed", "batch_size", "num_workers", "shuffle_shards")
LOG_EVERY = 10  # on a GPU, steps between reads of the losses (each read waits for the queued kernels)


@dataclass
class Position:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    groups: dict[str, list[int]] = field(default_factory=dict)  # (epoch, batch) of the non-primary groups


def batch_digest(ids: list[str]) -> str:
    return hashlib.sha1("\n".join(ids).encode()).hexdigest()[:12]


def train(cfg: TrainConfig, on_step: OnStep | None = None,
          on_batch: Callable[[int, list[str]], None] | None = None, clock: StepClock | None = None) -> dict:
    """Run (or resume) training, single process or under torchrun. Returns paths and final metrics. `on_step`
    reports each logged step (on rank 0); `on_batch(step, ids)` sees each batch of this rank before it is used;
    `clock` (`distillkit bench train`) times each step's phases."""
    torch.manual_seed(cfg.seed)
    dist = Distributed(local_device(resolve_device(cfg.device)))
    device = dist.device
    groups = build_groups(cfg, dist.rank, dist.world)  # before anything is written: a refused store leaves no folder
    teachers = teachers_of(cfg, groups)
    m = groups[0].sources[0].manifest
    model = build_student(cfg.student, tuple(m.image_hw), m.student_patch, teachers.dims, cfg.projector).to(device)
    norm = TargetNorm(teachers.sources, device, "phi-s" if cfg.normalization == "phi-s" else "standard")
    primary = max(groups, key=lambda g: g.stream.batches_per_epoch(0))

    def rounds(epoch: int) -> int:  # optimiser steps in an epoch: the longest rank's batch count (primary group)
        return dist.max(primary.stream.batches_per_epoch(epoch))

    total = total_steps(cfg, rounds)
    val = val_streams(cfg, groups)
    data_spec = {k: getattr(cfg, k) for k in DATA_POSITION_KEYS} | {"world_size": dist.world,
                                                                   "groups": [g.name for g in groups]}
    run = Run(cfg, "dune", {"data_spec": data_spec, "teachers": teachers.names},
              {"config": cfg.model_dump(mode="json") | {"storage_options": redact(cfg.storage_options)},
               "world_size": dist.world}, on_step, dist, log_every=LOG_EVERY if device.type == "cuda" else 1,
              images_per_step=cfg.batch_size * dist.world)
    run.init_from(model)
    opt = adamw(model, cfg.lr, cfg.weight_decay)
    sched = step_schedule(opt, cfg.lr, cfg.min_lr, cfg.warmup_fraction, total)
    guard = FiniteGuard(opt, device, dist.world)
    pos = Position(**run.start(model, opt, sched).get("position", {}))
    if run.resuming:
        log.info("resumed from %s at step %d (epoch %d, batch %d)", run.path, pos.step, pos.epoch, pos.batch_in_epoch)
    run.start_step = pos.step
    student = {"student": cfg.student.model_dump(mode="json"), "projector": cfg.projector,
               "image_hw": list(m.image_hw), "patch_size": m.student_patch, "normalization": cfg.normalization,
               "teacher_dims": {t: [d, list(hw)] for t, (d, hw) in teachers.dims.items()}}
    batch_log = _BatchLog(run.out, dist.rank, pos.step) if cfg.log_batches else None
    model.train()
    t0 = time.perf_counter()
    try:
        while pos.step < total:
            epoch_rounds = rounds(pos.epoch)
            batches = GroupBatches(groups, cfg.num_workers, pos.epoch, pos.batch_in_epoch, pos.groups,
                                   device.type == "cuda")
            while pos.batch_in_epoch < epoch_rounds and pos.step < total:
                with phase(clock, "reader"):
                    batch = batches.next_round()  # None: this rank's data is done for the epoch; it joins the step
                opt.zero_grad(set_to_none=True)
                per_teacher: dict[str, torch.Tensor] = {}
                if batch is not None:
                    if on_batch:
                        on_batch(pos.step, batch["ids"])
                    if batch_log:
                        batch_log.write(pos, batch["ids"])
                    per_teacher = backward(model, batch, norm, device, teachers, cfg, pos.step + 1, clock, guard)
                with phase(clock, "optimizer"):
                    dist.average_gradients(model, len(batch["ids"]) if batch is not None else 0)
                    if cfg.grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip, foreach=True)
                    opt.step()
                    sched.step()
                    guard.step_done()
                pos.step, pos.batch_in_epoch, pos.groups = pos.step + 1, pos.batch_in_epoch + 1, batches.state()
                if pos.step % run.log_every == 0 or pos.step >= total or run.due(pos.step, total):
                    with phase(clock, "sync"):
                        guard.settle()
                with phase(clock, "log"):
                    run.log({"step": pos.step, "epoch": pos.epoch, "lr": sched.get_last_lr()[0],
                             "loss": torch.stack(list(per_teacher.values())).mean() if per_teacher
                             else float("nan"), **{f"loss/{t}": v for t, v in per_teacher.items()},
                             "batch": batch_digest(batch["ids"]) if batch is not None else None}, total)
                if pos.step >= total or (cfg.eval_every and pos.step % cfg.eval_every == 0):
                    with phase(clock, "eval"):
                        run.metrics["eval"].append({"step": pos.step, **(evaluate(model, val, norm, device,
                                                                                  teachers.has_cls)
                                                                         if dist.rank == 0 else {})})
                if pos.step >= total or run.due(pos.step, total):
                    with phase(clock, "checkpoint"):
                        run.save(position=pos.__dict__, **student)
                if clock is not None:
                    clock.end_step()
            if pos.batch_in_epoch >= epoch_rounds:
                pos.epoch, pos.batch_in_epoch = pos.epoch + 1, 0
    finally:
        run.close()
    return run.finish(plot_loss_curve, **run.steps_done(pos.step), wall_s=time.perf_counter() - t0,
                      final_eval=run.metrics["eval"][-1] if run.metrics["eval"] else {}, rank=dist.rank,
                      world_size=dist.world)


def total_steps(cfg: TrainConfig, rounds: Callable[[int], int]) -> int:
    """Optimiser steps of the run: ``max_steps``, else ``epochs`` passes (a fraction of the last one rounded up)."""
    if rounds(0) == 0:
        raise ValueError(f"stores {cfg.all_stores()} have no valid training samples")
    full_epochs, frac = int(cfg.epochs), cfg.epochs - int(cfg.epochs)
    return cfg.max_steps or max(1, sum(rounds(e) for e in range(full_epochs))
                                + (math.ceil(frac * rounds(full_epochs)) if frac else 0))


def backward(model, batch: dict, norm: TargetNorm, device: torch.device, teachers: Teachers, cfg: TrainConfig,
             step: int, clock: StepClock | None = None, guard: FiniteGuard | None = None) -> dict[str, torch.Tensor]:
    """The batch's combined loss (data sharing, teacher drop) backpropagated; returns each teacher's mean loss over
    the samples it trains on, as 0-d tensors on the device (read at logging time: no host sync per step). A
    non-finite loss never reaches the weights: it stops here, or with a deferring `guard` the step's update is
    skipped on the device and the run stops at the next logging interval."""
    with phase(clock, "h2d"):
        moved = to_device(batch, device)
    with phase(clock, "decode"):
        tgt = targets(moved, norm, device, teachers.has_cls)
    with phase(clock, "forward_loss"):
        res = student_losses(model, moved["samples/image"], tgt, device, cfg.color_jitter)
        names = [t for t in teachers.names if t in res]
        losses = torch.stack([res[t][0] for t in names])  # [T, B]
        coef = sharing_mask(names, batch["groups"], teachers.own, batch["available"], cfg.data_sharing,
                            cfg.generic_group).to(losses.device)
    with phase(clock, "sync"):
        if guard is not None and guard.deferred:
            guard.hold(losses, names, batch["ids"], step, coef)
        else:
            require_finite(losses, names, batch["ids"], step, coef)
    with phase(clock, "backward"):
        if cfg.teacher_drop == "lowest_loss":
            coef = lowest_loss_drop(losses, coef, cfg.teacher_drop_p)
        combine(losses, coef).sum().backward()
        with torch.no_grad():
            active = (coef > 0).to(losses.dtype)
            means = (losses.detach() * active).sum(1) / active.sum(1).clamp_min(1)
    return dict(zip(names, means.unbind()))


class NonFiniteLoss(FloatingPointError):
    """A loss that is NaN or infinite: stop before it reaches the weights (the last checkpoint stays good)."""


def require_finite(losses: torch.Tensor, teachers: list[str], ids: list[str], step: int,
                   coef: torch.Tensor) -> None:
    """Every per-sample loss [T, B] that counts (coef > 0) must be finite; else name the teachers and samples.
    A NaN target means a damaged store (a shard gone, fill values read back): training on it would write a
    checkpoint full of NaN."""
    bad = ~torch.isfinite(losses) & (coef > 0)
    if not bool(bad.any()):
        return
    pairs = [(teachers[t], ids[b]) for t, b in bad.nonzero().tolist()]
    shown = ", ".join(f"{t} on {i}" for t, i in pairs[:5]) + (f" and {len(pairs) - 5} more" if len(pairs) > 5 else "")
    raise NonFiniteLoss(f"step {step}: the loss is not finite ({shown}); stopped before updating the weights, the "
                        "last checkpoint is intact. A NaN target usually means a damaged store: run `distillkit "
                        "validate --deep` on it (and `distillkit cache --repair`)")


class FiniteGuard:
    """The finite-loss check without a host sync per step, where that is safe: one process on a GPU with fused
    AdamW. There a bad step's update is skipped on the device (the optimiser's ``found_inf``, as torch's GradScaler
    uses it) and the held flags are read at the logging interval (`settle`), raising `NonFiniteLoss` for the first
    bad step; the weights never take a non-finite update and no checkpoint is written after it. Elsewhere (CPU,
    where reading the flag costs nothing; torchrun, where every rank must stop together) each step checks at once."""

    def __init__(self, opt: torch.optim.Optimizer, device: torch.device, world: int, deferred: bool | None = None):
        fused = all(g.get("fused") for g in opt.param_groups)
        self.opt = opt
        self.deferred = (device.type == "cuda" and world == 1 and fused) if deferred is None else deferred and fused
        self.held: list[tuple] = []

    def hold(self, losses: torch.Tensor, teachers: list[str], ids: list[str], step: int, coef: torch.Tensor) -> None:
        bad = (~torch.isfinite(losses.detach()) & (coef > 0)).any()
        self.opt.found_inf = bad.float()  # read by the fused step: 1 skips this update on the device
        self.held.append((bad, losses.detach(), teachers, ids, step, coef))

    def step_done(self) -> None:
        self.opt.found_inf = None

    def settle(self) -> None:
        """Read the held flags (one sync); `NonFiniteLoss` naming the first bad step."""
        held, self.held = self.held, []
        if held and any(torch.stack([h[0] for h in held]).tolist()):
            for _, *args in held:
                require_finite(*args)


class _BatchLog:
    """`out_dir/batches/rank<r>.jsonl`: which samples each rank trained on at each step (audit and tests).
    On resume, lines after the checkpoint's step (written before a crash) are dropped."""

    def __init__(self, out: Path, rank: int, resume_step: int):
        self.path = out / "batches" / f"rank{rank}.jsonl"
        self.path.parent.mkdir(exist_ok=True)
        keep = []
        if self.path.exists():
            keep = [ln for ln in self.path.read_text().splitlines() if json.loads(ln)["step"] < resume_step]
        self.path.write_text("".join(ln + "\n" for ln in keep))

    def write(self, pos: Position, ids: list[str]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": pos.step, "epoch": pos.epoch, "ids": ids}) + "\n")
