"""The DUNE student's config (torch-free: `distillkit train` and the task registry read it without building a
network)."""

from __future__ import annotations

from typing import Literal

from distillkit.config.common import Strict


class StudentConfig(Strict):
    """DUNE-style ViT student (timm VisionTransformer with registers)."""

    preset: Literal["vit_tiny", "vit_small", "vit_base", "custom"] = "vit_small"
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    num_registers: int = 4
    layerscale_init: float = 1e-4

    def dims(self) -> tuple[int, int, int]:
        presets = {"vit_tiny": (192, 12, 3), "vit_small": (384, 12, 6), "vit_base": (768, 12, 12)}
        dim, depth, heads = presets.get(self.preset, (384, 12, 6))
        return (self.embed_dim or dim, self.depth or depth, self.num_heads or heads)
