"""`distillkit bench train`: the real trainer's steady-state images/s beside its compute bound, same run.

The trainer arm is `distillkit train` itself (the DUNE trainer on a feature store: reader and workers, target
decode, loss, AdamW, logging, a checkpoint inside the timed window; the pointmap trainer on a scene store) with a
`StepClock` that times each step's phases. Warm-up steps are excluded, and so is the last step (its final evaluation
and checkpoint are not steady state). The bound arm is the same model's step (same functions, same optimiser) on
batches already in device memory, timed before and after the trainer (drift on a shared machine hits both), so
``trainer_vs_bound`` = trainer images/s / bound images/s says what the rest of the trainer costs, and
``phases_ms_per_step`` says where: ``reader`` (waiting for the next batch), ``h2d``, ``decode`` (targets), ``data``
(pointmap: views and weights), ``forward_loss``, ``backward``, ``optimizer``, ``sync`` (the finite-loss check),
``log``, ``checkpoint``.

Without ``store`` a store is built on the fly: the demo photographs cached by a 2-block random-init ViT-S/14 teacher
(DUNE), or a synthetic 12-Scenes room aligned from its GT depth (pointmap).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from typing import Callable

import torch

from distillkit.training.clock import StepClock

TINY_TEACHER = {"name": "dinov2_vits14_reg", "overrides": {"depth": 2}}


def _timed(step: Callable[[int], None], n: int, warmup: int, device: torch.device) -> tuple[list[float], list[float]]:
    """(wall seconds, process CPU seconds) of each of `n` calls of `step(i)` after `warmup` untimed ones."""
    for i in range(warmup):
        step(i)
    wall, cpu = [], []
    for i in range(n):
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        step(warmup + i)
        _sync(device)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summary(clock: StepClock, warmup: int, steps: int, images_per_step: int,
            bound: list[tuple[list[float], list[float]]]) -> dict:
    """The trainer's window (steps warmup+1 .. warmup+steps) against the bound's step times (two runs). Medians
    per step: a shared machine's bursts hit a few steps, not the typical one. ``trainer_vs_bound_cpu`` compares
    this process's CPU seconds per step instead (steadier when other work shares the cores; it leaves out the
    reader workers' own processes and any waiting)."""
    bound_s = [t for wall, _ in bound for t in wall]
    bound_cpu = statistics.median([t for _, cpu in bound for t in cpu])
    ends = clock.step_end
    if len(ends) < warmup + steps or warmup < 1:
        raise ValueError(f"the trainer ran {len(ends)} steps, fewer than warm-up {warmup} (>= 1) + {steps}")
    per_step = [b - a for a, b in zip(ends[warmup - 1:warmup + steps - 1], ends[warmup:warmup + steps])]
    trainer_s, bound = statistics.median(per_step), statistics.median(bound_s)
    cpus = clock.step_cpu
    trainer_cpu = statistics.median(b - a for a, b in zip(cpus[warmup - 1:warmup + steps - 1],
                                                          cpus[warmup:warmup + steps]))
    phases: dict[str, float] = {}
    for p in clock.phases[warmup:warmup + steps]:
        for k, v in p.items():
            phases[k] = phases.get(k, 0.0) + v / steps
    mean_s = sum(per_step) / steps
    return {"trainer_images_per_s": images_per_step / trainer_s, "bound_images_per_s": images_per_step / bound,
            "trainer_vs_bound": bound / trainer_s, "trainer_ms_per_step": 1e3 * trainer_s,
            "bound_ms_per_step": 1e3 * bound, "gap_ms_per_step": 1e3 * (trainer_s - bound),
            "trainer_vs_bound_means": (sum(bound_s) / len(bound_s)) / mean_s,
            "trainer_vs_bound_cpu": bound_cpu / trainer_cpu, "trainer_cpu_ms_per_step": 1e3 * trainer_cpu,
            "bound_cpu_ms_per_step": 1e3 * bound_cpu,
            "phases_ms_per_step": {k: round(1e3 * v, 2) for k, v in sorted(phases.items(), key=lambda kv: -kv[1])},
            "other_ms_per_step": round(1e3 * (mean_s - sum(phases.values())), 2),
            "trainer_ms_all": [round(1e3 * t, 2) for t in per_step], "bound_ms_all": [round(1e3 * t, 2) for t in bound_s]}


# ---- DUNE ----------------------------------------------------------------------------------------------------------
def dune_store(tmp: str, image_size: int, images: int, device: str) -> str:
    """The demo photographs (and crops, `images` of them at least) cached by the tiny random teacher."""
    from distillkit.cache import run_cache
    from distillkit.config.cache import CacheConfig
    from distillkit.demo_data import load_photos, write_demo_images

    crops = max(0, -(-images // len(load_photos())) - 1)
    write_demo_images(os.path.join(tmp, "images"), crops_per_photo=crops)
    store = os.path.join(tmp, "bench.zarr")
    run_cache(CacheConfig(source=os.path.join(tmp, "images"), store=store, teachers=[TINY_TEACHER],
                          image_size=str(image_size), student_patch=14, batch_size=16, shard_size=16,
                          val_fraction=0.0, device=device), show_progress=False)
    return store


def bench_dune(store: str | None = None, student: str = "vit_small", projector: str = "tp", image_size: int = 224,
               batch_size: int = 8, steps: int = 10, warmup: int = 3, num_workers: int = 2, device: str = "auto",
               ckpt_every: int | None = None) -> dict:
    from distillkit.devices import resolve_device
    from distillkit.store.reader import make_loader
    from distillkit.training.dune.config import TrainConfig
    from distillkit.training.dune.data import build_groups, teachers_of
    from distillkit.training.dune.evaluate import to_device
    from distillkit.training.dune.normalize import TargetNorm
    from distillkit.training.dune.trainer import backward, train
    from distillkit.students.dune import StudentConfig, build_student
    from distillkit.training.optim import adamw, step_schedule

    dev = resolve_device(device)
    given = store
    with tempfile.TemporaryDirectory(prefix="distillkit-bench-train-") as tmp:
        t0 = time.perf_counter()
        store = store or dune_store(tmp, image_size, batch_size * (warmup + steps + 1), str(dev))
        store_s = time.perf_counter() - t0
        total = warmup + steps + 1  # the last step (final eval and checkpoint) is outside the window
        cfg = TrainConfig(stores=[store], out_dir=os.path.join(tmp, "run"), student=StudentConfig(preset=student),
                          projector=projector, batch_size=batch_size, max_steps=total, num_workers=num_workers,
                          device=str(dev), ckpt_every=ckpt_every or warmup + steps // 2, max_eval_samples=batch_size)
        groups = build_groups(cfg, 0, 1)
        teachers = teachers_of(cfg, groups)
        m = groups[0].sources[0].manifest
        per_epoch = groups[0].stream.batches_per_epoch(0)
        torch.manual_seed(cfg.seed)
        model = build_student(cfg.student, tuple(m.image_hw), m.student_patch, teachers.dims, projector).to(dev)
        norm = TargetNorm(teachers.sources, dev)
        opt = adamw(model, cfg.lr, cfg.weight_decay)
        sched = step_schedule(opt, cfg.lr, cfg.min_lr, cfg.warmup_fraction, total)
        held = [to_device(b, dev) for _, b in zip(range(min(steps, per_epoch)), make_loader(groups[0].stream, 0))]
        held = [{**b, "groups": ["all"] * len(b["ids"]),
                 "available": {t: torch.ones(len(b["ids"]), dtype=torch.bool) for t in teachers.names}}
                for b in held if len(b["ids"]) == batch_size]
        if not held:
            raise ValueError(f"{store}: fewer than batch_size={batch_size} training samples")

        def bound_step(i: int) -> None:  # the trainer's step, minus everything around the model
            opt.zero_grad(set_to_none=True)
            backward(model, held[i % len(held)], norm, dev, teachers, cfg, i + 1)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip, foreach=True)
            opt.step()
            sched.step()

        bound = [_timed(bound_step, steps, warmup, dev)]
        clock = StepClock(dev)
        result = train(cfg, clock=clock)
        bound.append(_timed(bound_step, steps, warmup, dev))
    return {"bench": "train", "task": "dune", "student": student, "projector": projector, "device": str(dev),
            "torch_threads": torch.get_num_threads(), "image_hw": list(m.image_hw), "batch_size": batch_size,
            "steps": steps, "warmup_steps": warmup, "num_workers": num_workers, "steps_per_epoch": per_epoch,
            "ckpt_every": cfg.ckpt_every, "store": given or "demo photos, tiny random teacher",
            "store_build_s": store_s, "last_loss": result["last_loss"],
            **summary(clock, warmup, steps, batch_size, bound)}


# ---- pointmap ------------------------------------------------------------------------------------------------------
def pointmap_store(tmp: str, frames: int, image_size: int) -> str:
    """A synthetic 12-Scenes room (colour 96x128) aligned from its GT depth with the dataset's poses."""
    from distillkit.config.scenes import SceneCacheConfig
    from distillkit.scenes.pipeline import run_scenes
    from distillkit.scenes.synthetic import write_12scenes

    write_12scenes(os.path.join(tmp, "scenes", "office", "room"), n_frames=frames, color_hw=(96, 128),
                   depth_hw=(48, 64), seed=4, n_test=max(frames // 8, 2), n_inf=0, n_holes=1)
    store = os.path.join(tmp, "scenes.zarr")
    run_scenes(SceneCacheConfig(source=os.path.join(tmp, "scenes"), store=store, image_size=image_size,
                                graph="swin-2-noncyclic", predictor="gt-depth", device="cpu", max_frames=None,
                                frames_per_shard=16, align={"known_poses": True, "known_intrinsics": True,
                                                            "pose_pixels": 1024, "max_iters": 15}))
    return store


def bench_pointmap(store: str | None = None, student: str = "small_cnn", batch_size: int = 8, steps: int = 40,
                   warmup: int = 3, device: str = "auto", frames: int = 48, image_size: int = 128) -> dict:
    from distillkit.devices import resolve_device
    from distillkit.scenes.data import SceneData
    from distillkit.students.pointmap import build_pointmap_student
    from distillkit.training.optim import ProgressSchedule, adamw
    from distillkit.training.pointmap.config import PointmapJobConfig
    from distillkit.training.pointmap.job import job_scenes
    from distillkit.training.pointmap.sampling import SceneTensors, image_batch, image_loss, seeded_generator
    from distillkit.training.pointmap.trainer import train_pointmap_student

    dev = resolve_device(device)
    with tempfile.TemporaryDirectory(prefix="distillkit-bench-train-") as tmp:
        t0 = time.perf_counter()
        store = store or pointmap_store(tmp, frames, image_size)
        store_s = time.perf_counter() - t0
        total = warmup + steps + 1
        job = PointmapJobConfig(store=store, out_dir=os.path.join(tmp, "run"), student={"preset": student},
                                batch_size=batch_size, max_steps=total, device=str(dev),
                                ckpt_every=warmup + steps // 2)
        scene = job_scenes(job)[0]
        cfg = job.scene_config(scene)
        data = SceneData.from_store(store, scene)
        tensors = SceneTensors(data, tuple(cfg.image_size or data.hw))
        per_epoch = -(-len(data.train_idx) // batch_size)
        held = [image_batch(tensors, cfg, i, per_epoch, seeded_generator(cfg.seed, i), dev) for i in range(steps)]
        torch.manual_seed(cfg.seed)
        model = build_pointmap_student(cfg.student, tensors.out_hw)
        model.set_scene(*data.target_stats())
        model.to(dev).train()
        opt = adamw(model, cfg.lr, cfg.weight_decay)
        sched = ProgressSchedule(opt, cfg.lr, cfg.min_lr, cfg.warmup_fraction)

        def bound_step(i: int) -> None:
            loss = image_loss(model, held[i % len(held)], cfg, seeded_generator(cfg.seed, i))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip, foreach=True)
            opt.step()
            sched.update(i / total)

        bound = [_timed(bound_step, steps, warmup, dev)]
        clock = StepClock(dev)
        result = train_pointmap_student(cfg, data, clock=clock)
        bound.append(_timed(bound_step, steps, warmup, dev))
    return {"bench": "train", "task": "pointmap", "student": student, "device": str(dev),
            "torch_threads": torch.get_num_threads(), "image_hw": list(tensors.out_hw), "batch_size": batch_size,
            "steps": steps, "warmup_steps": warmup, "train_frames": len(data.train_idx), "ckpt_every": cfg.ckpt_every,
            "store_build_s": store_s, "last_loss": result["last_loss"],
            **summary(clock, warmup, steps, batch_size, bound)}


def bench_train(task: str = "dune", threads: int | None = None, **kw) -> dict:
    """`bench_dune` or `bench_pointmap` (their keyword arguments), with `threads` torch threads (None: torch's
    default; 1 is steadier on a shared machine, where spinning OpenMP threads wait for each other)."""
    if task not in ("dune", "pointmap"):
        raise ValueError(f"task must be dune or pointmap, got {task!r}")
    old = torch.get_num_threads()
    torch.set_num_threads(threads or old)
    try:
        return (bench_dune if task == "dune" else bench_pointmap)(**kw)
    finally:
        torch.set_num_threads(old)
