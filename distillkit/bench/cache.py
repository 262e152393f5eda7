"""`distillkit bench cache`: a whole cache run against the bare teacher forward on the same preprocessed images.

Besides the wall-time ratio it reports the pipeline's own cost: the process CPU seconds of the run minus the
teachers' own CPU seconds (measured on the bare forward of the same images in the same batches), per image, and
the stage that limits the run (from the pipeline's per-stage busy times). With `null_teacher` the teachers are
stand-ins of their shape and dtype that cost nothing: the run's ceiling on this machine.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def write_bench_photos(folder: str | Path, n: int, hw: tuple[int, int] = (480, 640), seed: int = 0) -> Path:
    """n JPEG photographs of hw (default 640x480): random 4:3 crops of scikit-image's colour photographs, resized."""
    from PIL import Image

    from distillkit.demo_data import load_photos

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    photos = [p[..., :3] for p in load_photos().values() if p.ndim == 3 and p.shape[2] in (3, 4)]
    rng = np.random.default_rng(seed)
    h, w = hw
    for i in range(n):
        src = photos[i % len(photos)]
        sh, sw = src.shape[:2]
        scale = rng.uniform(0.6, 1.0) * min(sh / h, sw / w)
        ch, cw = int(h * scale), int(w * scale)
        y0, x0 = rng.integers(0, sh - ch + 1), rng.integers(0, sw - cw + 1)
        img = Image.fromarray(np.ascontiguousarray(src[y0:y0 + ch, x0:x0 + cw])).resize((w, h))
        img.save(folder / f"photo_{i:05d}.jpg", quality=90)
    return folder


def bench_cache(source: str | None, teacher: str | list[str] = "dinov2_vits14_reg", checkpoint: str | None = None,
                image_size: str = "224", student_patch: int = 14, batch_size: int = 32, num_workers: int = 4,
                shard_size: int = 64, overrides: dict | None = None, null_teacher: bool = False,
                images: int = 256) -> dict:
    """Wall and CPU time of a whole cache run vs the bare teacher forward over the same preprocessed images.
    Without `source`, `images` 640x480 JPEG photographs are written to a temporary folder first."""
    from distillkit.bench.null_teacher import LABEL, NullTeacher
    from distillkit.config.cache import CacheConfig
    from distillkit.features.inputs import decode_sample
    from distillkit.features.pipeline import load_teachers, plan_samples, run_cache

    names = [teacher] if isinstance(teacher, str) else list(teacher)
    with tempfile.TemporaryDirectory(prefix="distillkit-bench-") as tmp:
        if source is None:
            source = str(write_bench_photos(os.path.join(tmp, "photos"), images))
        cfg = CacheConfig(source=source, store=os.path.join(tmp, "bench.zarr"),
                          teachers=[{"name": n, "checkpoint": checkpoint, "overrides": overrides or {}} for n in names],
                          image_size=image_size, student_patch=student_patch, batch_size=batch_size,
                          num_workers=num_workers, shard_size=shard_size)
        teachers = load_teachers(cfg)  # loaded once per process: both sides reuse them
        if null_teacher:
            teachers = {n: NullTeacher(t, batch_size) for n, t in teachers.items()}
        hws = {tuple(t.input_hw) for t in teachers.values()}
        decoded = [d for d in (decode_sample(r.uri, cfg.image_size, hws, {}) for r in plan_samples(cfg).refs)
                   if d.ok]
        inputs = {hw: np.stack([d.teacher_inputs[hw] for d in decoded]) for hw in hws}
        del decoded
        for t in teachers.values():  # warm-up
            t(torch.from_numpy(inputs[tuple(t.input_hw)][:batch_size]))
        c0, t0 = time.process_time(), time.perf_counter()
        for t in teachers.values():
            x = inputs[tuple(t.input_hw)]
            for i in range(0, len(x), batch_size):
                t(torch.from_numpy(x[i:i + batch_size]))
        _sync(teachers)
        bare, bare_cpu = time.perf_counter() - t0, time.process_time() - c0
        n = len(next(iter(inputs.values())))
        del inputs
        c0, t0 = time.process_time(), time.perf_counter()
        result = run_cache(cfg, show_progress=False, teachers=teachers)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    stages = result.get("stages") or {}
    label = f" ({LABEL})" if null_teacher else ""
    return {"bench": "cache", "teacher": ", ".join(f"{n}{label}" for n in names), "null_teacher": null_teacher,
            "image_size": list(cfg.image_size), "images": int(n), "cache_wall_s": wall, "bare_forward_s": bare,
            "overhead_ratio": wall / bare, "cache_images_per_s": n / wall, "bare_images_per_s": n / bare,
            "cache_cpu_s": cpu, "teacher_cpu_s": bare_cpu, "pipeline_core_ms_per_image": 1e3 * (cpu - bare_cpu) / n,
            "bottleneck": result.get("bottleneck"), "stages": stages, "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "rejected": len(result["rejected"])}


def _sync(teachers: dict) -> None:
    for t in teachers.values():
        if t.device.type == "cuda":
            torch.cuda.synchronize(t.device)
