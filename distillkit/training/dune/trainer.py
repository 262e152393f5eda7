"""Train a DUNE-style student by streaming cached teacher features.

Checkpoints hold the model, optimiser, scheduler, RNG states and the data position (epoch, batches consumed), so a
resumed run sees exactly the batches the uninterrupted run would have seen. They are written and read by
`distillkit.training.checkpoint` (plain data, loaded with weights_only).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from distillkit.config.common import redact
from distillkit.devices import resolve_device
from distillkit.images import images_to_input
from distillkit.store.reader import ShardStream, make_loader
from distillkit.students import build_student
from distillkit.training.checkpoint import CKPT_NAME, init_from, load_checkpoint, save_checkpoint
from distillkit.training.dune.config import TrainConfig
from distillkit.training.dune.data import GroupBatches, build_groups, val_streams
from distillkit.training.dune.losses import cosine, teacher_loss
from distillkit.training.dune.normalize import TargetNorm
from distillkit.training.dune.objectives import combine, lowest_loss_drop, sharing_mask
from distillkit.training.optim import adamw, step_schedule

log = logging.getLogger("distillkit")

DATA_POSITION_KEYS = ("seed", "batch_size", "num_workers", "shuffle_shards")


@dataclass
class Position:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    groups: dict[str, list[int]] = field(default_factory=dict)  # (epoch, batch) of the non-primary groups


def batch_losses(model, batch: dict, norm: TargetNorm, device: torch.device, has_cls: dict[str, bool],
                 jitter: float = 0.0):
    """Per teacher: (per-image loss [B], student CLS, student patches), against normalised targets."""
    x = images_to_input(batch["samples/image"], device, jitter)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    with autocast:
        preds = model(x)
    out = {}
    for t, (cls_s, patch_s) in preds.items():
        if f"teachers/{t}/patch" not in batch:
            continue
        patch_t = norm(t, "patch", batch[f"teachers/{t}/patch"].to(device))
        cls_t = norm(t, "cls", batch[f"teachers/{t}/cls"].to(device)) if has_cls[t] else None
        out[t] = (teacher_loss(cls_s if has_cls[t] else None, patch_s, cls_t, patch_t), cls_s, patch_s)
    return out


def batch_digest(ids: list[str]) -> str:
    return hashlib.sha1("\n".join(ids).encode()).hexdigest()[:12]


@torch.no_grad()
def evaluate(model, streams: list[tuple[ShardStream, list[str]]], norm: TargetNorm, device: torch.device,
             has_cls: dict[str, bool]) -> dict[str, dict[str, float]]:
    """Per teacher: distillation loss and cosine similarity to the raw teacher features, on held-out samples."""
    model.eval()
    acc: dict[str, dict[str, float]] = {}
    for stream, teachers in streams:
        for batch in make_loader(stream, 0):
            res = batch_losses(model, batch, norm, device, has_cls)
            b = len(batch["ids"])
            for t, (loss, cls_s, patch_s) in res.items():
                if t not in teachers:
                    continue
                a = acc.setdefault(t, {"loss": 0.0, "cos_patch": 0.0, "cos_cls": 0.0, "samples": 0})
                a["samples"] += b
                a["loss"] += float(loss.sum())
                raw_patch = norm.raw(t, "patch", batch[f"teachers/{t}/patch"].to(device))
                a["cos_patch"] += float(cosine(norm.invert(t, "patch", patch_s), raw_patch).flatten(1).mean(1).sum())
                if has_cls[t]:
                    raw_cls = norm.raw(t, "cls", batch[f"teachers/{t}/cls"].to(device))
                    a["cos_cls"] += float(cosine(norm.invert(t, "cls", cls_s), raw_cls).sum())
    model.train()
    return {t: {k: (v / a["samples"] if k != "samples" else v) for k, v in a.items() if k != "cos_cls" or has_cls[t]}
            for t, a in acc.items()}


class Distributed:
    """torchrun-aware helpers. Gradients are summed across ranks by hand (not DDP hooks) so that every rank takes
    every optimiser step, even a rank whose shards ran out this epoch (it contributes zero gradient and zero
    samples): every sample is used exactly once per epoch and all ranks keep identical weights and optimiser state.
    """

    def __init__(self, device: torch.device):
        dist = torch.distributed
        if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        self.on = dist.is_initialized()
        self.rank = dist.get_rank() if self.on else 0
        self.world = dist.get_world_size() if self.on else 1
        self.device = device

    def max(self, value: int) -> int:
        if not self.on:
            return value
        t = torch.tensor([value], dtype=torch.int64)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return int(t.item())

    def average_gradients(self, model: torch.nn.Module, local_samples: int) -> int:
        """grad <- sum over ranks of grad(sum of per-sample losses) / total samples. Returns the total."""
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params] + [torch.tensor([float(local_samples)],
                                                                               device=params[0].device)])
        if self.on:
            torch.distributed.all_reduce(flat)
        total = max(int(round(flat[-1].item())), 1)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p) / total)
            offset += n
        return total

    def barrier(self) -> None:
        if self.on:
            torch.distributed.barrier()


def train(cfg: TrainConfig, on_step: Callable[[int, int, dict], None] | None = None,
          on_batch: Callable[[int, list[str]], None] | None = None) -> dict:
    """Run (or resume) training, single process or under torchrun. Returns paths and final metrics."""
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    dist = Distributed(device)
    out = Path(cfg.out_dir)
    groups = build_groups(cfg, dist.rank, dist.world)  # before anything is written: a refused store leaves no folder
    out.mkdir(parents=True, exist_ok=True)
    provenance = {}
    for g in groups:
        for src in g.sources:
            for t, p in src.provenance.items():
                seen = provenance.setdefault(t, (p, src))[0]
                if (seen.embed_dim, tuple(seen.grid_hw)) != (p.embed_dim, tuple(p.grid_hw)):
                    raise ValueError(f"teacher {t} has different shapes in {src.url} and another store")
    if cfg.teachers is not None and set(cfg.teachers) - set(provenance):
        raise ValueError(f"teachers {sorted(set(cfg.teachers) - set(provenance))} are in none of the stores "
                         f"{cfg.all_stores()}")
    teacher_names = sorted(provenance)
    has_cls = {t: getattr(p, "has_cls", True) for t, (p, _) in provenance.items()}
    own_source = {t: src for t, (_, src) in provenance.items()}
    for g in groups:  # a teacher's statistics come from its own group's store when there is one
        if g.own_teacher in g.teachers:
            own_source[g.own_teacher] = next(s for s in g.sources if g.own_teacher in s.teachers)
    m = groups[0].sources[0].manifest
    model = build_student(cfg.student, tuple(m.image_hw), m.student_patch,
                          {t: (p.embed_dim, tuple(p.grid_hw)) for t, (p, _) in provenance.items()},
                          cfg.projector).to(device)
    norm = TargetNorm(own_source, device, "phi-s" if cfg.normalization == "phi-s" else "standard")
    primary = max(groups, key=lambda g: g.stream.batches_per_epoch(0))

    def rounds(epoch: int) -> int:  # optimiser steps in an epoch: the longest rank's batch count (primary group)
        return dist.max(primary.stream.batches_per_epoch(epoch))

    if rounds(0) == 0:
        raise ValueError(f"stores {cfg.all_stores()} have no valid training samples")
    full_epochs, frac = int(cfg.epochs), cfg.epochs - int(cfg.epochs)
    total = cfg.max_steps or max(1, sum(rounds(e) for e in range(full_epochs))
                                 + (math.ceil(frac * rounds(full_epochs)) if frac else 0))
    val = val_streams(cfg, groups)
    if cfg.init_from and not (cfg.resume and (out / CKPT_NAME).exists()):
        init_from(model, cfg.init_from, "dune")
    opt = adamw(model, cfg.lr, cfg.weight_decay)
    sched = step_schedule(opt, cfg.lr, cfg.min_lr, cfg.warmup_fraction, total)
    pos = Position()
    public_cfg = cfg.model_dump(mode="json") | {"storage_options": redact(cfg.storage_options)}
    metrics: dict[str, Any] = {"config": public_cfg, "world_size": dist.world, "train": [], "eval": []}
    ckpt_path = out / CKPT_NAME
    data_spec = {k: getattr(cfg, k) for k in DATA_POSITION_KEYS} | {"world_size": dist.world,
                                                                   "groups": [g.name for g in groups]}
    if cfg.resume and ckpt_path.exists():
        ck = load_checkpoint(ckpt_path, "dune")  # on the CPU: the RNG state must be; load_state_dict moves the rest
        if ck["data_spec"] != data_spec or ck["teachers"] != teacher_names:
            raise ValueError(f"{ckpt_path} was written with {ck['data_spec']} and teachers {ck['teachers']}; this "
                             f"run has {data_spec} and {teacher_names}. Use the same settings or a new out_dir.")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        pos = Position(**ck["position"])
        metrics = ck["metrics"]
        torch.set_rng_state(ck["rng"]["torch"])
        log.info("resumed from %s at step %d (epoch %d, batch %d)", ckpt_path, pos.step, pos.epoch,
                 pos.batch_in_epoch)
    batch_log = _BatchLog(out, dist.rank, pos.step) if cfg.log_batches else None
    own_teacher = {g.name: g.own_teacher for g in groups}

    def checkpoint() -> None:
        if dist.rank == 0:
            save_checkpoint(ckpt_path, "dune", {
                "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "position": pos.__dict__, "data_spec": data_spec, "teachers": teacher_names, "metrics": metrics,
                "rng": {"torch": torch.get_rng_state()}, "student": cfg.student.model_dump(mode="json"),
                "projector": cfg.projector, "image_hw": list(m.image_hw), "patch_size": m.student_patch,
                "normalization": cfg.normalization,
                "teacher_dims": {t: [p.embed_dim, list(p.grid_hw)] for t, (p, _) in provenance.items()}})
            (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
        dist.barrier()

    def evaluate_now() -> dict:
        return {"step": pos.step, **(evaluate(model, val, norm, device, has_cls) if dist.rank == 0 else {})}

    model.train()
    t0 = time.perf_counter()
    while pos.step < total:
        epoch_rounds = rounds(pos.epoch)
        batches = GroupBatches(groups, cfg.num_workers, pos.epoch, pos.batch_in_epoch, pos.groups,
                               device.type == "cuda")
        while pos.batch_in_epoch < epoch_rounds and pos.step < total:
            batch = batches.next_round()  # None: this rank's data is done for the epoch; it still joins the step
            opt.zero_grad(set_to_none=True)
            per_teacher: dict[str, float] = {}
            n = 0
            if batch is not None:
                if on_batch:
                    on_batch(pos.step, batch["ids"])
                if batch_log:
                    batch_log.write(pos, batch["ids"])
                res = batch_losses(model, batch, norm, device, has_cls, cfg.color_jitter)
                names = [t for t in teacher_names if t in res]
                losses = torch.stack([res[t][0] for t in names])  # [T, B]
                coef = sharing_mask(names, batch["groups"], own_teacher, batch["available"], cfg.data_sharing,
                                    cfg.generic_group).to(losses.device)
                require_finite(losses, names, batch["ids"], pos.step + 1, coef)
                if cfg.teacher_drop == "lowest_loss":
                    coef = lowest_loss_drop(losses, coef, cfg.teacher_drop_p)
                combine(losses, coef).sum().backward()
                per_teacher = {t: float((losses[j].detach() * (coef[j] > 0)).sum() / (coef[j] > 0).sum().clamp_min(1))
                               for j, t in enumerate(names)}
                n = len(batch["ids"])
            dist.average_gradients(model, n)
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            pos.step += 1
            pos.batch_in_epoch += 1
            pos.groups = batches.state()
            loss = sum(per_teacher.values()) / len(per_teacher) if per_teacher else float("nan")
            rec = {"step": pos.step, "epoch": pos.epoch, "lr": sched.get_last_lr()[0], "loss": loss,
                   **{f"loss/{t}": v for t, v in per_teacher.items()},
                   "batch": batch_digest(batch["ids"]) if batch is not None else None}
            metrics["train"].append(rec)
            if on_step:
                on_step(pos.step, total, rec)
            if cfg.eval_every and pos.step % cfg.eval_every == 0 and pos.step < total:
                metrics["eval"].append(evaluate_now())
            if pos.step >= total:
                metrics["eval"].append(evaluate_now())
                checkpoint()
            elif pos.step % cfg.ckpt_every == 0:
                checkpoint()
        if pos.batch_in_epoch >= epoch_rounds:
            pos.epoch += 1
            pos.batch_in_epoch = 0
    wall = time.perf_counter() - t0
    png = out / "loss_curve.png"
    if dist.rank == 0:
        from distillkit.training.dune.plots import plot_loss_curve

        plot_loss_curve(metrics, png)
    final_eval = metrics["eval"][-1] if metrics["eval"] else {}
    losses_seen = [r["loss"] for r in metrics["train"] if r["loss"] == r["loss"]]
    return {"checkpoint": str(ckpt_path), "metrics": str(out / "metrics.json"), "loss_curve": str(png),
            "steps": pos.step, "wall_s": wall, "final_eval": final_eval, "rank": dist.rank, "world_size": dist.world,
            "first_loss": losses_seen[0] if losses_seen else None,
            "last_loss": losses_seen[-1] if losses_seen else None}


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
