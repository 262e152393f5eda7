"""DUNE-style student: a timm ViT with registers and one projector per teacher.

As in DUNE, the encoder's final norm is not used during distillation and registers are dropped before the
projectors. Projectors (one per teacher):
  tp  transformer projector (DUNE): one transformer block at the student width + a linear map to the teacher width;
      tokens can exchange information (a person's pose spread over head patches, say).
  sp  "simple" 2-layer MLP per token (UNIC's expendable head), separate for CLS and patch tokens. `mlp` = `sp`.
  lp  UNIC's ladder: a 2-layer MLP on the output of every encoder block, summed (separately for CLS and patches).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from distillkit.students.dune.config import StudentConfig


class TransformerProjector(nn.Module):
    def __init__(self, dim: int, out_dim: int, num_heads: int, layerscale_init: float):
        super().__init__()
        self.block = Block(dim, num_heads, mlp_ratio=4.0, qkv_bias=True, init_values=layerscale_init)
        self.out = nn.Linear(dim, out_dim)

    def forward(self, blocks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.out(self.block(blocks[-1]))
        return y[:, 0], y[:, 1:]


class MlpProjector(nn.Module):
    def __init__(self, dim: int, out_dim: int, hidden: int):
        super().__init__()
        self.cls = Mlp(dim, hidden, out_dim)
        self.patch = Mlp(dim, hidden, out_dim)

    def forward(self, blocks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = blocks[-1]
        return self.cls(tokens[:, 0]), self.patch(tokens[:, 1:])


class LadderProjector(nn.Module):
    """UNIC's ladder of projectors: hidden width = dim for inner blocks, 4*dim for the last (as UNIC)."""

    def __init__(self, dim: int, out_dim: int, depth: int):
        super().__init__()
        hidden = [dim] * (depth - 1) + [4 * dim]
        self.cls = nn.ModuleList(Mlp(dim, h, out_dim) for h in hidden)
        self.patch = nn.ModuleList(Mlp(dim, h, out_dim) for h in hidden)

    def forward(self, blocks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        cls = sum(head(b[:, 0]) for head, b in zip(self.cls, blocks))
        patch = sum(head(b[:, 1:]) for head, b in zip(self.patch, blocks))
        return cls, patch


class DuneStudent(nn.Module):
    def __init__(self, cfg: StudentConfig, image_hw: tuple[int, int], patch_size: int,
                 teachers: dict[str, tuple[int, tuple[int, int]]], projector: str = "tp"):
        """teachers: name -> (embed_dim, grid_hw) of the cached targets."""
        super().__init__()
        dim, depth, heads = cfg.dims()
        self.encoder = VisionTransformer(
            img_size=image_hw, patch_size=patch_size, embed_dim=dim, depth=depth, num_heads=heads,
            reg_tokens=cfg.num_registers, no_embed_class=True, init_values=cfg.layerscale_init, num_classes=0,
            global_pool="", class_token=True)
        self.encoder.norm = nn.Identity()  # DUNE: the final norm is not used while distilling
        self.grid_hw = (image_hw[0] // patch_size, image_hw[1] // patch_size)
        self.teacher_grids = {n: tuple(g) for n, (_, g) in teachers.items()}
        self.ladder = projector == "lp"

        def make(c: int) -> nn.Module:
            if projector == "tp":
                return TransformerProjector(dim, c, heads, cfg.layerscale_init)
            if projector == "lp":
                return LadderProjector(dim, c, depth)
            return MlpProjector(dim, c, 4 * dim)

        self.projectors = nn.ModuleDict({name: make(c) for name, (c, _) in teachers.items()})

    def _drop_registers(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[:, :1], x[:, self.encoder.num_prefix_tokens:]], dim=1)

    def block_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """CLS + patch tokens (registers dropped) after every block (only the last unless a ladder needs all)."""
        e = self.encoder
        x = e.norm_pre(e.patch_drop(e._pos_embed(e.patch_embed(x))))
        outs = []
        for i, block in enumerate(e.blocks):
            x = block(x)
            if self.ladder or i == len(e.blocks) - 1:
                outs.append(self._drop_registers(x))
        return outs

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] -> [B, 1 + h*w, D]: CLS + patch tokens of the last block, registers dropped."""
        return self.block_outputs(x)[-1]

    def forward(self, x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        blocks = self.block_outputs(x)
        out = {}
        for name, proj in self.projectors.items():
            cls, patch = proj(blocks)
            b, _, c = patch.shape
            patch = patch.reshape(b, *self.grid_hw, c)
            th, tw = self.teacher_grids[name]
            if (th, tw) != self.grid_hw:  # targets cached on the teacher's own grid
                patch = F.interpolate(patch.permute(0, 3, 1, 2), size=(th, tw), mode="bilinear",
                                      align_corners=False).permute(0, 2, 3, 1)
            out[name] = (cls, patch)
        return out


def build_student(cfg: StudentConfig, image_hw: tuple[int, int], patch_size: int,
                  teachers: dict[str, tuple[int, tuple[int, int]]], projector: str = "tp") -> DuneStudent:
    return DuneStudent(cfg, image_hw, patch_size, teachers, projector)
