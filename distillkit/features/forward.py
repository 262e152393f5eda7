"""The teacher stage of one shard: each image decoded once feeds every teacher, in fixed batches (the same batches
on every run: the same bytes), each batch finished on the teacher's device (features/finish.py)."""

from __future__ import annotations

import numpy as np
import torch

from distillkit.features.clock import StageClock
from distillkit.features.finish import HostBuffers, finish_batch
from distillkit.features.inputs import DecodedSample
from distillkit.store.writer import TeacherShard
from distillkit.teachers import Teacher


def forward_shard(teachers: dict[str, Teacher], decoded: list[DecodedSample], valid: np.ndarray, errors: list[str],
                  batch_size: int, clock: StageClock, buffers: HostBuffers) -> dict[str, TeacherShard]:
    """Every teacher's tokens for the valid rows of one shard, as stored; rows a teacher cannot represent
    (non-finite in the stored dtype) become invalid for all teachers (alignment stays exact); invalid rows are NaN."""
    n = len(decoded)
    rows = np.flatnonzero(valid)
    out = {name: TeacherShard(
        patch=buffers.get((n, *t.provenance.grid_hw, t.provenance.embed_dim), t.provenance.dtype),
        cls=buffers.get((n, t.provenance.embed_dim), t.provenance.dtype)) for name, t in teachers.items()}
    stat = {name: {tok: (np.zeros((n, t.provenance.embed_dim)), np.zeros((n, t.provenance.embed_dim)))
                   for tok in ("patch", "cls")} for name, t in teachers.items()}
    inputs = {hw: _stacked([decoded[r].teacher_inputs[hw] for r in rows], buffers)
              for hw in {tuple(t.input_hw) for t in teachers.values()}}
    for i in range(0, len(rows), batch_size):
        batch = rows[i:i + batch_size]
        for name, t in teachers.items():
            with clock.timing("teachers"):
                y = t(inputs[tuple(t.input_hw)][i:i + len(batch)])
            with clock.timing("finish"):
                _finish_into(name, t, y, batch, out[name], stat[name], valid, errors)
    for name, shard in out.items():  # a sample rejected by any teacher is rejected for all
        bad = valid == 0
        shard.patch[bad], shard.cls[bad] = np.nan, np.nan
        shard.image_stats = stat[name]
    for arr in inputs.values():
        if arr.numel():
            buffers.put(arr.numpy())
    return out


def _stacked(images: list[np.ndarray], buffers: HostBuffers) -> torch.Tensor:
    """One host array of a shard's inputs for a teacher size (pinned on CUDA: copies to the device overlap)."""
    if not images:
        return torch.empty(0)
    x = buffers.get((len(images), *images[0].shape), np.uint8)
    for j, im in enumerate(images):
        x[j] = im
    return torch.from_numpy(x)


def _finish_into(name: str, t: Teacher, y, batch: np.ndarray, shard: TeacherShard, stat: dict, valid: np.ndarray,
                 errors: list[str]) -> None:
    a, b = int(batch[0]), int(batch[-1]) + 1
    contiguous = b - a == len(batch)  # the common case: cast straight into the shard's rows
    dst_p = shard.patch[a:b] if contiguous else np.empty((len(batch), *shard.patch.shape[1:]), shard.patch.dtype)
    dst_c = shard.cls[a:b] if contiguous else np.empty((len(batch), shard.cls.shape[1]), shard.cls.dtype)
    (pm, pm2), (cm, cm2), finite = finish_batch(y.patch, y.stored_cls, dst_p, dst_c)
    if not contiguous:
        shard.patch[batch], shard.cls[batch] = dst_p, dst_c
    stat["patch"][0][batch], stat["patch"][1][batch] = pm, pm2
    stat["cls"][0][batch], stat["cls"][1][batch] = cm, cm2
    for r in batch[~finite]:
        valid[r], errors[r] = 0, (f"teacher {name}: output not finite in {t.provenance.dtype} "
                                  "(NaN/Inf or beyond the dtype's range; try dtype float32)")
