"""`distillkit bench decouple`: the same student trained from the store vs with the teacher running online.

The online arm is DUNE's/UNIC's training step: the frozen teacher (eval, inference_mode, bf16 autocast on a GPU)
runs on each batch, then the student step. Everything else is shared, so the difference is the teacher forward:
the same student init (one copy per arm), projectors, loss (`batch_losses`), target normalisation (the store's
statistics), AdamW + schedule + clipping as the trainer, the same batches in the same order from the same streaming
reader (the online arm reads only the student images from the store, no target arrays), and the teacher input is
the cached student view itself, so online targets equal the cached ones up to fp16 storage. Steps of the two arms
alternate, so drift on a shared machine hits both alike; there `ratio_paired` (median of the per-round ratios) and
`ratio_cpu_time` (this process's CPU seconds) are steadier than `ratio` (median wall-clock step times).
"""

from __future__ import annotations

import copy
import logging
import os
import statistics
import tempfile
import time
from typing import Iterator

import torch
import torch.nn.functional as F

from distillkit_schemas import paths

from distillkit.training.progress import ProgressLine

log = logging.getLogger("distillkit")
DUNE_RESOLUTION = 448  # DUNE distils at 336 then 448 (paper, Tab. 8 of the supplementary)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batches(stream, num_workers: int, batch_size: int) -> Iterator[dict]:
    """Full batches forever (epoch after epoch); partial last batches are skipped so every step is alike."""
    from distillkit.store.reader import make_loader

    epoch = 0
    while True:
        n = 0
        for batch in make_loader(stream, num_workers, epoch=epoch):
            if len(batch["ids"]) == batch_size:
                n += 1
                yield batch
        if n == 0:
            raise ValueError(f"the store has fewer than batch_size={batch_size} usable samples")
        epoch += 1


def teacher_targets(teacher, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Online targets (cls, patch) from the student images [B, H, W, 3] uint8, as the cache computes them. When the
    teacher input differs from the student's (another patch size), the images are resized as DUNE's wrapper does."""
    hw = tuple(teacher.input_hw)
    if tuple(images.shape[1:3]) != hw:
        x = images.permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=hw, mode="bicubic", antialias=True, align_corners=False)
        images = x.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    out = teacher(images)
    return out.stored_cls, out.patch


class Arm:
    """One student with its optimiser; `step` is one training step of the DUNE trainer (one group, full sharing)."""

    def __init__(self, model, teacher_name: str, norm, device, has_cls: bool, total_steps: int,
                 lr: float = 3e-4, weight_decay: float = 0.03, grad_clip: float = 1.0):
        from distillkit.training.optim import adamw, step_schedule

        self.model, self.name, self.norm, self.device = model.train(), teacher_name, norm, device
        self.has_cls, self.grad_clip = {teacher_name: has_cls}, grad_clip
        self.opt = adamw(model, lr, weight_decay)
        self.sched = step_schedule(self.opt, lr, 1e-6, 0.1, total_steps)

    def loss(self, batch: dict) -> torch.Tensor:
        from distillkit.training.dune.objectives import combine
        from distillkit.training.dune.evaluate import batch_losses

        losses = batch_losses(self.model, batch, self.norm, self.device, self.has_cls)[self.name][0][None]
        return combine(losses, torch.ones_like(losses)).mean()

    def step(self, batch: dict) -> float:
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss(batch)
        loss.backward()
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.opt.step()
        self.sched.step()
        return float(loss.detach())


def count_flops(fn) -> int:
    """FLOPs of fn() (torch's FlopCounterMode; 1 multiply-add = 2 FLOPs). Attention runs in the math backend, whose
    matmuls the counter sees (CPU's fused kernel is not in its table)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def student_step_flops(student, image_hw, patch: int, teachers: dict[str, tuple[int, tuple[int, int]]],
                       projector: str) -> int:
    """Forward + backward of one image's distillation loss, on the meta device (shapes only, nothing computed)."""
    from distillkit.students import build_student
    from distillkit.training.dune.config import StudentConfig
    from distillkit.training.dune.losses import teacher_loss

    with torch.device("meta"):
        model = build_student(StudentConfig(preset=student), tuple(image_hw), patch, teachers, projector)
        x = torch.empty(1, 3, *image_hw)

    def step():
        out = model(x)
        loss = sum(teacher_loss(cls, p, torch.empty_like(cls), torch.empty_like(p)).sum() for cls, p in out.values())
        loss.backward()

    return count_flops(step)


def vit_forward_flops(arch: str, input_hw, overrides: dict | None = None) -> int:
    """One image through a timm ViT teacher (forward_features), on the meta device."""
    import timm

    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False, img_size=tuple(input_hw), num_classes=0, **(overrides or {}))
        x = torch.empty(1, 3, *input_hw)
    with torch.no_grad():
        return count_flops(lambda: model.forward_features(x))


def gpu_estimate(student: str, projector: str, patch: int, sizes: list[int]) -> dict:
    """ViT-L teachers on a GPU, from FLOPs: ratio = (student step + teacher forwards) / student step, assuming
    both run at the same achieved FLOP rate (bf16 autocast for both, as DUNE trains) and loading is hidden."""
    from distillkit.teachers.dinov2 import SPECS

    out = {}
    for side in sizes:
        hw, grid = (side, side), (side // patch, side // patch)
        t_flops = vit_forward_flops(SPECS["dinov2_vitl14"].arch, (grid[0] * 14, grid[1] * 14))
        one = student_step_flops(student, hw, patch, {"t": (1024, grid)}, projector)
        three = student_step_flops(student, hw, patch, {f"t{i}": (1024, grid) for i in range(3)}, projector)
        out[f"{side}px"] = {
            "teacher_forward_gflops_per_image": t_flops / 1e9,
            "student_step_gflops_per_image": one / 1e9,
            "ratio_one_vitl_teacher": (one + t_flops) / one,
            "student_step_3_teachers_gflops_per_image": three / 1e9,
            "ratio_dune_3_vitl_teachers": (three + 3 * t_flops) / three,
        }
    return {"teacher": "dinov2_vitl14 (MASt3R ViT-L/16 and Multi-HMR ViT-L/14 encoders: same tokens, ~same FLOPs)",
            "assumptions": "same achieved FLOP/s for the teacher forward (inference, bf16) and the student step "
                           "(forward + backward, bf16 autocast); reading cached targets and loading overlapped; "
                           "optimizer step not counted (elementwise, small). Inference usually reaches a higher "
                           "FLOP rate than a small student's training step, so the real ratio is if anything higher.",
            "sizes": out}


def amortised(cache_s_per_image: float, step_s_cached: float, step_s_online: float, batch_size: int,
              students: list[int], epochs: float) -> list[dict]:
    """Per image of the dataset: one cache pass + N students x epochs from the store, vs N x epochs online."""
    cached, online = step_s_cached / batch_size, step_s_online / batch_size
    rows = []
    for n in students:
        c = cache_s_per_image + n * epochs * cached
        o = n * epochs * online
        rows.append({"students": n, "cached_s_per_image": c, "online_s_per_image": o, "speedup": o / c})
    return rows


def bench_decouple(teacher: str = "dinov2_vitb14", student: str = "vit_small", source: str | None = None,
                   checkpoint: str | None = None, image_size: str = "224", student_patch: int = 14,
                   batch_size: int = 8, steps: int = 5, warmup: int = 1, projector: str = "tp", num_workers: int = 0,
                   device: str = "auto", overrides: dict | None = None, students: tuple[int, ...] = (1, 2, 4, 8, 16),
                   epochs: float = 1.0, seed: int = 0, gpu_sizes: tuple[int, ...] = (224, DUNE_RESOLUTION)) -> dict:
    """Step time of the same student trained from a store vs with the teacher online (same run, alternating)."""
    from distillkit.cache import load_teachers, run_cache
    from distillkit.config.cache import CacheConfig
    from distillkit.demo_data import write_demo_images
    from distillkit.store.reader import ShardStream, StoreSource
    from distillkit.students import build_student
    from distillkit.teachers import resolve_device
    from distillkit.teachers.registry import teacher_patch_size
    from distillkit.training.dune.config import StudentConfig
    from distillkit.training.dune.normalize import TargetNorm

    teacher_patch_size(teacher)  # an unknown name fails here, naming the known ones
    if steps < 1 or warmup < 0:
        raise ValueError(f"steps must be >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    if projector not in ("tp", "sp", "mlp", "lp"):
        raise ValueError(f"projector must be tp, sp, mlp or lp, got {projector!r}")
    dev = resolve_device(device)
    with tempfile.TemporaryDirectory(prefix="distillkit-bench-") as tmp:
        if source is None:  # scikit-image's photographs, no crops: 19 images
            write_demo_images(os.path.join(tmp, "images"), crops_per_photo=0)
            source = os.path.join(tmp, "images")
        cfg = CacheConfig(source=source, store=os.path.join(tmp, "bench.zarr"),
                          teachers=[{"name": teacher, "checkpoint": checkpoint, "overrides": overrides or {}}],
                          image_size=image_size, student_patch=student_patch, batch_size=batch_size,
                          shard_size=max(batch_size, 16), val_fraction=0.0, device=str(dev))
        t = load_teachers(cfg)[teacher]  # loaded before the clock starts; run_cache reuses this instance
        log.info("decouple: caching %s with %s (the store the cached arm trains from)", source, teacher)
        t0 = time.perf_counter()
        result = run_cache(cfg, show_progress=False)
        cache_s = time.perf_counter() - t0
        src = StoreSource(cfg.store)
        prov = src.provenance[teacher]
        has_cls = getattr(prov, "has_cls", True)
        dims = {teacher: (prov.embed_dim, tuple(prov.grid_hw))}
        norm = TargetNorm({teacher: src}, dev)
        target_dtype = getattr(torch, prov.dtype)
        torch.manual_seed(seed)
        model = build_student(StudentConfig(preset=student), tuple(src.manifest.image_hw), student_patch, dims,
                              projector).to(dev)
        total = warmup + steps
        arms = {"cached": Arm(model, teacher, norm, dev, has_cls, total),
                "online": Arm(copy.deepcopy(model), teacher, norm, dev, has_cls, total)}
        images_only = StoreSource(cfg.store, teachers=[])  # the online arm reads no targets
        loaders = {"cached": _batches(ShardStream([src], batch_size, "all", seed=seed), num_workers, batch_size),
                   "online": _batches(ShardStream([images_only], batch_size, "all", seed=seed), num_workers,
                                      batch_size)}
        times: dict[str, list[float]] = {"cached": [], "online": []}
        cpu: dict[str, list[float]] = {"cached": [], "online": []}  # this process's CPU seconds: robust to a busy box
        losses: dict[str, list[float]] = {"cached": [], "online": []}
        teacher_s: list[float] = []
        check = None
        progress = ProgressLine("decouple (both arms)", 2 * batch_size, every_s=15.0)
        for i in range(total):
            for arm in (("cached", "online") if i % 2 == 0 else ("online", "cached")):
                _sync(dev)
                t0, c0 = time.perf_counter(), time.process_time()
                batch = next(loaders[arm])
                if arm == "online":
                    t1 = time.perf_counter()
                    cls, patch = teacher_targets(t, batch["samples/image"])
                    # rounded to the store's dtype as the cache does (bf16 autocast on a GPU is coarser anyway):
                    # both arms then train on the same targets, and their losses must agree
                    batch[paths.cls(teacher)] = cls.to(target_dtype)
                    batch[paths.patch(teacher)] = patch.to(target_dtype)
                    _sync(dev)
                    teacher_s.append(time.perf_counter() - t1)
                loss = arms[arm].step(batch)
                _sync(dev)
                times[arm].append(time.perf_counter() - t0)
                cpu[arm].append(time.process_time() - c0)
                losses[arm].append(loss)
                if arm == "online" and check is None:
                    check = _target_check(src, teacher, batch, cls, patch)
            progress(i + 1, total, {"loss": loss})
        n_images = int(src.valid.sum())
        rejected = len(result["rejected"])
        input_hw, grid_hw = list(t.input_hw), list(prov.grid_hw)
        t_flops = count_flops(lambda: t(torch.zeros(1, *src.manifest.image_hw, 3, dtype=torch.uint8)))
    s_flops = student_step_flops(student, tuple(src.manifest.image_hw), student_patch, dims, projector)
    step_c = statistics.median(times["cached"][warmup:])
    step_o = statistics.median(times["online"][warmup:])
    fwd = statistics.median(teacher_s[warmup:])
    cpu_c, cpu_o = (statistics.median(cpu[a][warmup:]) for a in ("cached", "online"))
    paired = statistics.median(o / c for o, c in zip(times["online"][warmup:], times["cached"][warmup:]))
    return {
        "bench": "decouple", "teacher": teacher, "teacher_overrides": overrides or {}, "student": student,
        "projector": projector, "device": str(dev), "torch_threads": torch.get_num_threads(),
        "image_hw": list(src.manifest.image_hw), "teacher_input_hw": input_hw, "grid_hw": grid_hw,
        "batch_size": batch_size, "steps": steps, "warmup_steps": warmup, "num_workers": num_workers,
        "images": n_images, "rejected": rejected,
        "step_s_cached": step_c, "step_s_online": step_o, "ratio": step_o / step_c,
        "ratio_paired": paired, "cpu_s_cached": cpu_c, "cpu_s_online": cpu_o, "ratio_cpu_time": cpu_o / cpu_c,
        "teacher_forward_s": fwd, "step_s_cached_all": times["cached"], "step_s_online_all": times["online"],
        "loss_cached": losses["cached"], "loss_online": losses["online"],
        "max_loss_diff": max(abs(a - b) for a, b in zip(losses["cached"], losses["online"])),
        "targets": check,
        "teacher_forward_gflops_per_batch": t_flops * batch_size / 1e9,
        "student_step_gflops_per_batch": s_flops * batch_size / 1e9,
        "flops_ratio": (s_flops + t_flops) / s_flops,
        "cache_s": cache_s, "cache_s_per_image": cache_s / max(n_images, 1),
        "amortised_formula": "per dataset image: cached = cache_s_per_image + N x epochs x step_s_cached / "
                             "batch_size; online = N x epochs x step_s_online / batch_size",
        "amortised_epochs": epochs,
        "amortised": amortised(cache_s / max(n_images, 1), step_c, step_o, batch_size, list(students), epochs),
        "gpu_estimate": gpu_estimate(student, projector, student_patch, list(gpu_sizes)) if gpu_sizes else None,
    }


def _target_check(src, teacher: str, batch: dict, cls: torch.Tensor, patch: torch.Tensor) -> dict:
    """Online targets of one batch against the cached rows of the same samples (stored in the teacher's dtype)."""
    import numpy as np

    rows = batch["rows"].numpy()
    lo, hi = int(rows.min()), int(rows.max()) + 1
    cached_patch_raw = src.read(paths.patch(teacher), lo, hi)[rows - lo]
    cached_patch = torch.from_numpy(cached_patch_raw.astype(np.float32))
    cached_cls = torch.from_numpy(src.read(paths.cls(teacher), lo, hi)[rows - lo].astype(np.float32))
    online_patch, online_cls = patch.float().cpu(), cls.float().cpu()
    scale = max(float(cached_patch.abs().max()), float(cached_cls.abs().max()), 1e-12)
    diff = max(float((online_patch - cached_patch).abs().max()), float((online_cls - cached_cls).abs().max()))
    dt = cached_patch_raw.dtype  # the store's dtype: the online targets rounded to it, as the arm trains on them
    rounded = float((online_patch.numpy().astype(dt).astype(np.float32) - cached_patch.numpy()).__abs__().max())
    return {"samples": len(rows), "max_abs_diff": diff, "max_abs_value": scale, "max_rel_diff": diff / scale,
            "fp16_half_ulp_at_max": scale * 2.0 ** -11, "rounded_patch_max_abs_diff": rounded}
