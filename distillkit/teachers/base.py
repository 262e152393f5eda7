"""What every teacher offers to the caching pipeline."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from distillkit_schemas import TeacherProvenance

from distillkit.images import normalise

# provenance `resize` of every teacher (an identity field: changing it refuses to reopen existing stores)
RESIZE = "crop box from the source, bicubic antialiased resize to input_hw"
# provenance `output` suffix of teachers whose forward returns cls=None (the cache stores the patch mean)
PATCH_ONLY_OUTPUT = TeacherProvenance.CLS_IS_PATCH_MEAN


@dataclass
class TeacherOutput:
    cls: torch.Tensor | None  # [B, C] or None when the teacher has no summary token
    patch: torch.Tensor  # [B, h, w, C]

    @property
    def stored_cls(self) -> torch.Tensor:
        """The CLS token the cache stores and students learn: the teacher's own, or the patch mean for a teacher
        without one (its provenance `output` ends in PATCH_ONLY_OUTPUT)."""
        return self.cls if self.cls is not None else self.patch.mean(dim=(1, 2))


class Teacher:
    """A loaded, frozen teacher. Subclasses set `provenance` and implement `forward`."""

    provenance: TeacherProvenance
    module: torch.nn.Module
    device: torch.device

    @property
    def input_hw(self) -> tuple[int, int]:
        return tuple(self.provenance.input_hw)

    def normalize(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """[B, H, W, 3] uint8 -> [B, 3, H, W] float normalised with the teacher's mean/std."""
        x = images_uint8.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
        return normalise(x, self.provenance.mean, self.provenance.std)

    @torch.inference_mode()
    def __call__(self, images_uint8: torch.Tensor) -> TeacherOutput:
        x = self.normalize(images_uint8)
        if self.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = self.forward(x)
        else:
            out = self.forward(x)
        cls = None if out.cls is None else out.cls.float()
        return TeacherOutput(cls=cls, patch=out.patch.float())

    def forward(self, x: torch.Tensor) -> TeacherOutput:  # pragma: no cover - abstract
        raise NotImplementedError


def random_init_digest(name: str, seed: int) -> str:
    """The provenance of a randomly initialised teacher, announced loudly: never a silent stand-in for weights."""
    import logging

    digest = f"random-init:{seed}"
    logging.getLogger("distillkit").warning(
        "!!! teacher %s has NO checkpoint: using RANDOM weights (%s). Its features are meaningless for real "
        "distillation; pass --checkpoint for real targets.", name, digest)
    return digest
