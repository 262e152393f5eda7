"""DUNE-style student: a timm ViT with registers and one projector per teacher.

As in DUNE, the encoder's final norm is not used during distillation, registers are dropped before the projectors,
and each teacher gets its own projector: TP (one transformer block at the student width + a linear map to the
teacher width; tokens can mix) or an MLP (two layers, separate for CLS and patch tokens, per token).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from ..config import StudentConfig


class TransformerProjector(nn.Module):
    def __init__(self, dim: int, out_dim: int, num_heads: int, layerscale_init: float):
        super().__init__()
        self.block = Block(dim, num_heads, mlp_ratio=4.0, qkv_bias=True, init_values=layerscale_init)
        self.out = nn.Linear(dim, out_dim)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.out(self.block(tokens))
        return y[:, 0], y[:, 1:]


class MlpProjector(nn.Module):
    def __init__(self, dim: int, out_dim: int, hidden: int):
        super().__init__()
        self.cls = Mlp(dim, hidden, out_dim)
        self.patch = Mlp(dim, hidden, out_dim)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cls(tokens[:, 0]), self.patch(tokens[:, 1:])


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
        self.projectors = nn.ModuleDict({
            name: TransformerProjector(dim, c, heads, cfg.layerscale_init) if projector == "tp"
            else MlpProjector(dim, c, 4 * dim)
            for name, (c, _) in teachers.items()
        })

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] -> [B, 1 + h*w, D]: CLS + patch tokens, registers dropped."""
        feats = self.encoder.forward_features(x)
        return torch.cat([feats[:, :1], feats[:, self.encoder.num_prefix_tokens:]], dim=1)

    def forward(self, x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        tokens = self.encode(x)
        out = {}
        for name, proj in self.projectors.items():
            cls, patch = proj(tokens)
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
