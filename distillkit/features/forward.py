"""The teacher stage of one shard: each image decoded once feeds every teacher, in fixed batches (the same batches
on every run: the same bytes). Each output goes on to the finish stage (features/finish.py) as it comes, so the
teachers keep forwarding while earlier batches are finished."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from distillkit.features.clock import StageClock
from distillkit.features.finish import HostBuffers, ShardFinish
from distillkit.teachers import Teacher


def forward_shard(teachers: dict[str, Teacher], job: ShardFinish, batch_size: int, clock: StageClock,
                  buffers: HostBuffers, emit: Callable) -> None:
    """Forward the valid rows of `job`'s shard through every teacher; emit(job, name, rows, output) per batch,
    then emit(job, None, inputs, None) once the shard's inputs may be reused."""
    rows = np.flatnonzero(job.valid)
    inputs = {hw: _stacked([job.decoded[r].teacher_inputs[hw] for r in rows], buffers)
              for hw in {tuple(t.input_hw) for t in teachers.values()}}
    for i in range(0, len(rows), batch_size):
        batch = rows[i:i + batch_size]
        for name, t in teachers.items():
            with clock.timing("teachers"):
                y = t(inputs[tuple(t.input_hw)][i:i + len(batch)])
            emit(job, name, batch, y)
    image = inputs.get(job.image_hw)
    if len(rows) == len(job.decoded) and image is not None:  # every row valid: the student's images, as stacked
        job.image = image.numpy()
    done = [a.numpy() for a in inputs.values() if a.numel() and (job.image is None or a is not image)]
    emit(job, None, done, None)  # the inputs may be reused (the images handed on: once the shard is written)


def _stacked(images: list[np.ndarray], buffers: HostBuffers) -> torch.Tensor:
    """One host array of a shard's inputs for a teacher size (pinned on CUDA: copies to the device overlap)."""
    if not images:
        return torch.empty(0)
    x = buffers.get((len(images), *images[0].shape), np.uint8)
    for j, im in enumerate(images):
        x[j] = im
    return torch.from_numpy(x)
