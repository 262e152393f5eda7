"""fp16: the patch and CLS tokens as the teacher's dtype holds them (the default storage)."""

from __future__ import annotations

from typing import ClassVar

from distillkit.store.codecs.stage import Stage


class Fp16(Stage):
    identity: ClassVar[bool] = True


STAGE = Fp16  # what `codecs.KINDS` finds for the storage kind 'fp16'
