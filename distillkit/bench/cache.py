"""`distillkit bench cache`: a whole cache run against the bare teacher forward on the same preprocessed images."""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
import torch


def bench_cache(source: str, teacher: str, checkpoint: str | None = None, image_size: str = "224",
                student_patch: int = 14, batch_size: int = 32, num_workers: int = 4, shard_size: int = 64,
                overrides: dict | None = None) -> dict:
    """Wall time of a whole cache run vs the bare teacher forward over the same preprocessed images."""
    from distillkit.features.inputs import decode_sample
    from distillkit.features.pipeline import load_teachers, plan_samples, run_cache
    from distillkit.config.cache import CacheConfig

    with tempfile.TemporaryDirectory(prefix="distillkit-bench-") as tmp:
        cfg = CacheConfig(source=source, store=os.path.join(tmp, "bench.zarr"),
                          teachers=[{"name": teacher, "checkpoint": checkpoint, "overrides": overrides or {}}],
                          image_size=image_size, student_patch=student_patch, batch_size=batch_size,
                          num_workers=num_workers, shard_size=shard_size)
        t = load_teachers(cfg)[teacher]  # loaded once per process: both sides reuse it
        hw = tuple(t.input_hw)
        decoded = [decode_sample(r.uri, cfg.image_size, {hw}, {}) for r in plan_samples(cfg).refs]
        images = np.stack([d.teacher_inputs[hw] for d in decoded if d.ok])
        t(torch.from_numpy(images[:batch_size]))  # warm-up
        t0 = time.perf_counter()
        for i in range(0, len(images), batch_size):
            t(torch.from_numpy(images[i:i + batch_size]))
        bare = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = run_cache(cfg, show_progress=False)
        wall = time.perf_counter() - t0
    return {"bench": "cache", "teacher": teacher, "images": int(len(images)), "cache_wall_s": wall,
            "bare_forward_s": bare, "overhead_ratio": wall / bare, "cache_images_per_s": len(images) / wall,
            "bare_images_per_s": len(images) / bare, "rejected": len(result["rejected"])}
