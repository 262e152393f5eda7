"""Train a scene-specific pointmap student (seed 000): `train_pointmap_student(cfg, data) -> dict`.

The pieces beside it: ``augment`` (exact crop / resize / flip of image, targets and intrinsics), ``losses``,
``sampling`` (image and pixel samplers, the frozen-encoder feature buffer), ``evaluate`` (predictions, held-out
metrics, loading a trained student) and ``plots``. Checkpoints go through `distillkit.training.checkpoint`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from distillkit.devices import resolve_device
from distillkit.scenes.data import SceneData
from distillkit.students.pointmap import build_pointmap_student
from distillkit.students.pointmap.base import describe
from distillkit.training.checkpoint import CKPT_NAME, init_from, load_checkpoint, save_checkpoint
from distillkit.training.optim import ProgressSchedule, adamw
from distillkit.training.pointmap.config import PointmapTrainConfig
from distillkit.training.pointmap.evaluate import evaluate_scene
from distillkit.training.pointmap.plots import plot_pointmap_curve
from distillkit.training.pointmap.sampling import (SceneTensors, buffer_step_loss, feature_buffer, image_step_loss,
                                                   pixel_step_loss, seeded_generator)

log = logging.getLogger("distillkit")


def train_pointmap_student(cfg: PointmapTrainConfig, data: SceneData,
                           on_step: Callable[[int, int, dict], None] | None = None) -> dict:
    """Train (or resume) a scene-specific student on `data`'s training frames; evaluate on its test frames.

    Writes ``out_dir/checkpoint-last.pt`` (model, optimiser, scheduler, step/epoch, metrics, RNG, config),
    ``metrics.json`` and ``loss_curve.png``. Returns paths, timings, model size and the final held-out metrics
    (mean L2 in world units and / extent; with reference poses, % of frames within 5 cm/5 deg and 10 cm/10 deg and
    median errors)."""
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    out_hw = tuple(cfg.image_size or data.hw)
    if cfg.student.kind == "vit" and (out_hw[0] % cfg.student.patch_size or out_hw[1] % cfg.student.patch_size):
        raise ValueError(f"ViT patch {cfg.student.patch_size} does not divide the image size {out_hw}: set "
                         f"image_size to a multiple of it")
    scene = SceneTensors(data, out_hw)
    train_idx = data.train_idx
    model = build_pointmap_student(cfg.student, out_hw)
    centre, scale = data.target_stats()
    model.set_scene(centre, scale)
    if cfg.init_from and not (cfg.resume and (out / CKPT_NAME).exists()):
        init_from(model, cfg.init_from, "pointmap")
        centre, scale = model.centre.numpy().astype(np.float64), float(model.scale)  # the head was trained on these
    model.to(device)
    pixel = cfg.sampler == "pixel"
    buffered = pixel and not model.encoder_trainable()
    n_train_px = int(data.mask[train_idx].sum())
    steps_per_epoch = math.ceil(n_train_px / cfg.pixels_per_step) if pixel else math.ceil(len(train_idx) /
                                                                                          cfg.batch_size)
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    budget_s = cfg.max_minutes * 60 if cfg.max_minutes else None
    opt = adamw(model, cfg.lr, cfg.weight_decay)
    sched = ProgressSchedule(opt, cfg.lr, cfg.min_lr, cfg.warmup_fraction)
    spec = {"student": cfg.student.relevant(), "image_hw": list(out_hw), "scene": data.name, "sampler": cfg.sampler}
    metrics: dict[str, Any] = {"config": cfg.model_dump(mode="json"), "data": data.summary(), "model": describe(model),
                               "spec": spec, "train": [], "eval": []}
    step, train_s = 0, 0.0
    ckpt_path = out / CKPT_NAME
    if cfg.resume and ckpt_path.exists():
        ck = load_checkpoint(ckpt_path, "pointmap")  # on the CPU: the RNG state must be; load_state_dict moves the rest
        if ck["spec"] != spec:
            raise ValueError(f"{ckpt_path} was written for {ck['spec']}; this run is {spec}. Use a new out_dir.")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        step, train_s, metrics = ck["step"], ck["train_s"], ck["metrics"]
        torch.set_rng_state(ck["rng"]["torch"])
        log.info("resumed %s at step %d", ckpt_path, step)

    def checkpoint() -> None:
        save_checkpoint(ckpt_path, "pointmap", {
            "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": step,
            "epoch": step / steps_per_epoch, "train_s": train_s, "metrics": metrics, "spec": spec,
            "config": cfg.model_dump(mode="json"), "rng": {"torch": torch.get_rng_state()},
            "scene_centre": centre.tolist(), "scene_scale": scale})
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))

    buffer = None
    cpu0 = time.process_time()
    t_start = time.perf_counter()
    if buffered and step < total:
        buffer = feature_buffer(model, scene, cfg, device)
    train_s += time.perf_counter() - t_start
    eval_s = 0.0
    next_eval = (cfg.eval_every * steps_per_epoch) if cfg.eval_every else math.inf
    next_eval_s = cfg.eval_every_s or math.inf
    if metrics["eval"]:
        next_eval = metrics["eval"][-1]["step"] + cfg.eval_every * steps_per_epoch if cfg.eval_every else math.inf
        next_eval_s = metrics["eval"][-1]["train_s"] + (cfg.eval_every_s or math.inf)
    model.train()
    stop = False
    while step < total and not stop:
        t0 = time.perf_counter()
        gen = seeded_generator(cfg.seed, step)
        if buffer is not None:
            loss = buffer_step_loss(model, buffer, cfg, gen, device)
        elif pixel:
            loss = pixel_step_loss(model, scene, train_idx, cfg, gen, device)
        else:
            loss = image_step_loss(model, scene, cfg, step, steps_per_epoch, gen, device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
        opt.step()
        step += 1
        train_s += time.perf_counter() - t0
        lr = sched.update(max(step / total, train_s / budget_s if budget_s else 0.0))
        rec = {"step": step, "epoch": round(step / steps_per_epoch, 4), "loss": float(loss.detach()), "lr": lr,
               "train_s": round(train_s, 3)}
        metrics["train"].append(rec)
        if on_step:
            on_step(step, total, rec)
        if budget_s and train_s >= budget_s:
            stop = True
        if (step >= next_eval or train_s >= next_eval_s) and step < total and not stop:
            t1 = time.perf_counter()
            ev = evaluate_scene(model, scene, cfg, device, pose=False)
            metrics["eval"].append({"step": step, "epoch": rec["epoch"], "train_s": round(train_s, 3),
                                    **{k: v for k, v in ev.items() if not k.startswith("per_frame")}})
            eval_s += time.perf_counter() - t1
            while next_eval <= step:
                next_eval += cfg.eval_every * steps_per_epoch if cfg.eval_every else math.inf
            while next_eval_s <= train_s:
                next_eval_s += cfg.eval_every_s or math.inf
        if step % cfg.ckpt_every == 0 and step < total and not stop:
            checkpoint()
    t1 = time.perf_counter()
    final = evaluate_scene(model, scene, cfg, device, pose=True)
    eval_s += time.perf_counter() - t1
    summary = {k: v for k, v in final.items() if not k.startswith("per_frame")}
    if not metrics["eval"] or metrics["eval"][-1]["step"] != step:
        metrics["eval"].append({"step": step, "epoch": round(step / steps_per_epoch, 4), "train_s": round(train_s, 3),
                                **summary})
    metrics["final"] = final
    metrics["train_s"] = train_s
    metrics["process_cpu_s"] = time.process_time() - cpu0  # this call's CPU time (all threads), eval included
    metrics["steps"] = step
    checkpoint()
    png = plot_pointmap_curve(metrics, out / "loss_curve.png",
                              f"{data.name}: {cfg.student.kind} ({cfg.sampler} sampler)")
    losses = [r["loss"] for r in metrics["train"]]
    return {"checkpoint": str(ckpt_path), "metrics": str(out / "metrics.json"), "loss_curve": str(png),
            "steps": step, "epochs": round(step / steps_per_epoch, 3), "train_s": train_s, "eval_s": eval_s,
            "process_cpu_s": metrics["process_cpu_s"],
            "model": metrics["model"], "scene": data.name, "extent": data.extent(), "final_eval": summary,
            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
            "device": str(device)}
