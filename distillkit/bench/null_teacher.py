"""A pipeline-ceiling stand-in for a teacher: outputs of the named teacher's shape and dtype at no compute cost.

It answers with slices of one fixed random tensor made once, so a cache run measures everything *but* the
teacher: decoding, the finish (cast, finite check, statistics, encoding), the copies and the writes.
"""

from __future__ import annotations

import time

import torch

from distillkit.teachers.base import Teacher, TeacherOutput

LABEL = "null: shapes only"


class NullTeacher(Teacher):
    def __init__(self, real: Teacher, max_batch: int, seed: int = 0):
        self.provenance = real.provenance.model_copy(deep=True)
        self.device = real.device
        self.cpu_s = 0.0  # this thread's CPU time inside __call__ (the "teacher's own" work: nothing, by design)
        gh, gw = self.provenance.grid_hw
        g = torch.Generator().manual_seed(seed)
        self._patch = torch.randn(max_batch, gh, gw, self.provenance.embed_dim, generator=g).to(self.device)
        self._cls = torch.randn(max_batch, self.provenance.embed_dim, generator=g).to(self.device)

    def __call__(self, images_uint8: torch.Tensor) -> TeacherOutput:
        t0 = time.thread_time()
        n = images_uint8.shape[0]
        out = TeacherOutput(cls=self._cls[:n], patch=self._patch[:n])
        self.cpu_s += time.thread_time() - t0
        return out
