"""Train a scene-specific pointmap student (seed 000): `train_pointmap_student(cfg, data) -> dict`.

The pieces beside it: ``augment`` (exact crop / resize / flip of image, targets and intrinsics), ``losses``,
``sampling`` (image and pixel samplers, the frozen-encoder feature buffer), ``evaluate`` (predictions, held-out
metrics, loading a trained student) and ``plots``. Resume, checkpoints, metrics and the loss curve are
`distillkit.training.run`'s.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable

import numpy as np
import torch

from distillkit.devices import resolve_device
from distillkit.scenes.data import SceneData
from distillkit.students.pointmap import build_pointmap_student
from distillkit.students.pointmap.base import channels_last, describe
from distillkit.training.optim import ProgressSchedule, adamw
from distillkit.training.pointmap.config import PointmapTrainConfig
from distillkit.training.pointmap.evaluate import evaluate_scene
from distillkit.training.pointmap.plots import plot_pointmap_curve
from distillkit.training.pointmap.sampling import SceneTensors, epoch_steps, seeded_generator, step_losses
from distillkit.training.clock import StepClock, phase
from distillkit.training.run import Run
from distillkit.training.tasks import OnStep

log = logging.getLogger("distillkit")
LOG_EVERY = 10  # on a GPU, steps between reads of the loss (each read waits for the queued kernels)


def images_per_step(cfg: PointmapTrainConfig) -> int:
    """Frames a step trains on: the batch (image sampler) or the frames its pixels come from (pixel sampler)."""
    return cfg.frames_per_step if cfg.sampler == "pixel" else cfg.batch_size


def train_pointmap_student(cfg: PointmapTrainConfig, data: SceneData, on_step: OnStep | None = None,
                           clock: StepClock | None = None, on_batch: Callable[[int], None] | None = None) -> dict:
    """Train (or resume) a scene-specific student on `data`'s training frames; evaluate on its test frames.

    Writes ``out_dir/checkpoint-last.pt`` (model, optimiser, scheduler, step/epoch, metrics, RNG, config),
    ``metrics.json`` and ``loss_curve.png``. Returns paths, timings, model size and the final held-out metrics
    (mean L2 in world units and / extent; with reference poses, % of frames within 5 cm/5 deg and 10 cm/10 deg and
    median errors). `on_batch(step)` runs before each step (outside its timing); `clock` times the steps' phases."""
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    out_hw = tuple(cfg.image_size or data.hw)
    if cfg.student.kind == "vit" and (out_hw[0] % cfg.student.patch_size or out_hw[1] % cfg.student.patch_size):
        raise ValueError(f"ViT patch {cfg.student.patch_size} does not divide the image size {out_hw}: set "
                         f"image_size to a multiple of it")
    scene = SceneTensors(data, out_hw)
    model = build_pointmap_student(cfg.student, out_hw)
    spec = {"student": cfg.student.relevant(), "image_hw": list(out_hw), "scene": data.name, "sampler": cfg.sampler}
    run = Run(cfg, "pointmap", {"spec": spec}, {"config": cfg.model_dump(mode="json"), "data": data.summary(),
                                                "model": describe(model), "spec": spec}, on_step,
              log_every=LOG_EVERY if device.type == "cuda" else 1, images_per_step=images_per_step(cfg))
    centre, scale = data.target_stats()
    model.set_scene(centre, scale)
    if run.init_from(model):
        centre, scale = model.centre.numpy().astype(np.float64), float(model.scale)  # the head was trained on these
    channels_last(model.to(device))
    per_epoch = epoch_steps(data, cfg)
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * per_epoch))
    budget_s = cfg.max_minutes * 60 if cfg.max_minutes else None
    opt = adamw(model, cfg.lr, cfg.weight_decay)
    sched = ProgressSchedule(opt, cfg.lr, cfg.min_lr, cfg.warmup_fraction)
    ck = run.start(model, opt, sched)
    step, train_s = ck.get("step", 0), ck.get("train_s", 0.0)
    if run.resuming:
        log.info("resumed %s at step %d", run.path, step)
    run.start_step = step

    def save() -> None:
        run.save(step=step, epoch=step / per_epoch, train_s=train_s, config=cfg.model_dump(mode="json"),
                 scene_centre=centre.tolist(), scene_scale=scale)

    cpu0, t0 = time.process_time(), time.perf_counter()
    step_loss = step_losses(model, scene, data.train_idx, cfg, device, per_epoch, fill_buffer=step < total)
    train_s += time.perf_counter() - t0
    evals, eval_s, stop = EvalClock(cfg, per_epoch, run.metrics["eval"]), 0.0, False
    model.train()
    try:
        while step < total and not stop:
            if on_batch:
                on_batch(step)
            t0 = time.perf_counter()
            loss = step_loss(step, seeded_generator(cfg.seed, step), clock)
            opt.zero_grad(set_to_none=True)
            with phase(clock, "backward"):
                loss.backward()
            with phase(clock, "optimizer"):
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.grad_clip,
                                                   foreach=True)
                opt.step()
            step += 1
            train_s += time.perf_counter() - t0
            lr = sched.update(max(step / total, train_s / budget_s if budget_s else 0.0))
            with phase(clock, "log"):
                run.log({"step": step, "epoch": round(step / per_epoch, 4), "loss": loss.detach(), "lr": lr,
                         "train_s": round(train_s, 3)}, total)
            stop = bool(budget_s and train_s >= budget_s)
            if evals.due(step, train_s) and step < total and not stop:
                t1 = time.perf_counter()
                with phase(clock, "eval"):
                    run.metrics["eval"].append(eval_row(step, per_epoch, train_s, evaluate_scene(
                        model, scene, cfg, device, pose=False)))
                eval_s += time.perf_counter() - t1
            if run.due(step, total) and not stop:
                with phase(clock, "checkpoint"):
                    save()
            if clock is not None:
                clock.end_step()
    finally:
        run.close()
    t1 = time.perf_counter()
    final = evaluate_scene(model, scene, cfg, device, pose=True)
    eval_s += time.perf_counter() - t1
    summary = held_out(final)
    if not run.metrics["eval"] or run.metrics["eval"][-1]["step"] != step:
        run.metrics["eval"].append(eval_row(step, per_epoch, train_s, final))
    run.metrics.update(final=final, train_s=train_s, steps=step, steps_this_run=step - run.start_step,
                       process_cpu_s=time.process_time() - cpu0)  # this call's CPU time (all threads), eval included
    save()
    title = f"{data.name}: {cfg.student.kind} ({cfg.sampler} sampler)"
    return run.finish(lambda metrics, png: plot_pointmap_curve(metrics, png, title), **run.steps_done(step),
                      epochs=round(step / per_epoch, 3), train_s=train_s, eval_s=eval_s,
                      process_cpu_s=run.metrics["process_cpu_s"], model=run.metrics["model"], scene=data.name,
                      extent=data.extent(), final_eval=summary, device=str(device))


def held_out(ev: dict[str, Any]) -> dict[str, Any]:
    """An evaluation without its per-frame arrays."""
    return {k: v for k, v in ev.items() if not k.startswith("per_frame")}


def eval_row(step: int, per_epoch: int, train_s: float, ev: dict[str, Any]) -> dict[str, Any]:
    """An evaluation as ``metrics.json`` lists it: when, and its summary."""
    return {"step": step, "epoch": round(step / per_epoch, 4), "train_s": round(train_s, 3), **held_out(ev)}


class EvalClock:
    """When to evaluate during training: every ``eval_every`` epochs' worth of steps and every ``eval_every_s``
    seconds of training time (each off at 0), counted from the last evaluation (a resumed run keeps its clock)."""

    def __init__(self, cfg: PointmapTrainConfig, per_epoch: int, evals: list[dict]):
        self.every, self.every_s = cfg.eval_every * per_epoch or math.inf, cfg.eval_every_s or math.inf
        self.next = (evals[-1]["step"] if evals else 0) + self.every
        self.next_s = (evals[-1]["train_s"] if evals else 0.0) + self.every_s

    def due(self, step: int, train_s: float) -> bool:
        if step < self.next and train_s < self.next_s:
            return False
        while self.next <= step:
            self.next += self.every
        while self.next_s <= train_s:
            self.next_s += self.every_s
        return True
