"""`distillkit bench train`: the real trainer's steady-state images/s beside its compute bound, same run.

The trainer arm is `distillkit train` itself (the DUNE trainer on a feature store: reader and workers, target
decode, loss, AdamW, logging, a checkpoint inside the timed window; the pointmap trainer on a scene store) with a
`StepClock` that times each step's phases. Warm-up steps are excluded, and so is the last step (its final evaluation
and checkpoint are not steady state). The bound arm is the same model's step (same functions, same optimiser, its own copy of the model) on
batches already in device memory, one step beside each trainer step (`Paired`: drift on a shared machine hits both
alike), so
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


class Paired:
    """The bound arm, run one step at a time from inside the trainer (each trainer step calls `__call__` once, from
    a hook outside its phases), so both arms see the same load on a shared machine; the trainer's step times are
    taken net of it. Per step: wall and process CPU seconds."""

    def __init__(self, step: Callable[[int], None], device: torch.device):
        self.step, self.device, self.i = step, device, 0
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def __call__(self, *_) -> None:
        _sync(self.device)
        t0, c0 = time.perf_counter(), time.process_time()
        self.step(self.i)
        _sync(self.device)
        self.wall.append(time.perf_counter() - t0)
        self.cpu.append(time.process_time() - c0)
        self.i += 1


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summary(clock: StepClock, warmup: int, steps: int, images_per_step: int, bound: Paired) -> dict:
    """The trainer's window (steps warmup+1 .. warmup+steps) against the bound steps run beside them. Medians per
    step (a shared machine's bursts hit a few steps, not the typical one) and the median of the per-step ratios.
    ``trainer_vs_bound_cpu`` compares this process's CPU seconds per step instead (steadier when other work shares
    the cores; it leaves out the reader workers' own processes and any waiting)."""
    ends, cpus = clock.step_end, clock.step_cpu
    if len(ends) < warmup + steps or warmup < 1 or len(bound.wall) < warmup + steps:
        raise ValueError(f"the trainer ran {len(ends)} steps, fewer than warm-up {warmup} (>= 1) + {steps}")
    win = range(warmup, warmup + steps)
    per_step = [ends[i] - ends[i - 1] - bound.wall[i] for i in win]
    per_cpu = [cpus[i] - cpus[i - 1] - bound.cpu[i] for i in win]
    b_wall, b_cpu = [bound.wall[i] for i in win], [bound.cpu[i] for i in win]
    trainer_s, bound_s = statistics.median(per_step), statistics.median(b_wall)
    phases: dict[str, float] = {}
    for i in win:
        for k, v in clock.phases[i].items():
            phases[k] = phases.get(k, 0.0) + v / steps
    mean_s = sum(per_step) / steps
    return {"trainer_images_per_s": images_per_step / trainer_s, "bound_images_per_s": images_per_step / bound_s,
            "trainer_vs_bound": bound_s / trainer_s,
            "trainer_vs_bound_paired": statistics.median(b / t for b, t in zip(b_wall, per_step)),
            "trainer_vs_bound_cpu": statistics.median(b_cpu) / statistics.median(per_cpu),
            "trainer_ms_per_step": 1e3 * trainer_s, "bound_ms_per_step": 1e3 * bound_s,
            "gap_ms_per_step": 1e3 * (trainer_s - bound_s),
            "trainer_cpu_ms_per_step": 1e3 * statistics.median(per_cpu),
            "bound_cpu_ms_per_step": 1e3 * statistics.median(b_cpu),
            "phases_ms_per_step": {k: round(1e3 * v, 2) for k, v in sorted(phases.items(), key=lambda kv: -kv[1])},
            "other_ms_per_step": round(1e3 * (mean_s - sum(phases.values())), 2),
            "trainer_ms_all": [round(1e3 * t, 2) for t in per_step], "bound_ms_all": [round(1e3 * t, 2) for t in b_wall]}


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

        bound, clock = Paired(bound_step, dev), StepClock(dev)
        result = train(cfg, on_batch=bound, clock=clock)  # on_batch: after the reader, before the step's phases
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
    from distillkit.students.pointmap.base import channels_last
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
        channels_last(model.to(dev)).train()
        opt = adamw(model, cfg.lr, cfg.weight_decay)
        sched = ProgressSchedule(opt, cfg.lr, cfg.min_lr, cfg.warmup_fraction)

        def bound_step(i: int) -> None:
            loss = image_loss(model, held[i % len(held)], cfg, seeded_generator(cfg.seed, i))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip, foreach=True)
            opt.step()
            sched.update(i / total)

        bound, clock = Paired(bound_step, dev), StepClock(dev)
        result = train_pointmap_student(cfg, data, clock=clock, on_batch=bound)
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
