"""`ViTEncDec`: patch extractor (unfold), linear embedding + class token + learned positional embeddings, encoder
and decoder blocks (pre-LN multi-head self-attention and GELU MLP, dropout, residuals), then a conv head with
LeakyReLU whose last 1x1 conv predicts every pixel of its patch (pixel shuffle: full resolution, no upsampling)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from distillkit.students.pointmap.base import Centred
from distillkit.students.pointmap.config import PointmapStudentConfig

VIT_OUT_INIT_STD = 1e-3  # std of the ViT's last (3 p^2-output) layer: starts at the scene mean


class PatchExtractor(nn.Module):
    def __init__(self, patch: int):
        super().__init__()
        self.patch = patch

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, 3, H, W] -> [B, N, 3 p^2]
        return F.unfold(x, self.patch, stride=self.patch).transpose(1, 2)


class InputEmbedding(nn.Module):
    def __init__(self, patch: int, dim: int, grid: tuple[int, int]):
        super().__init__()
        self.proj = nn.Linear(3 * patch * patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid[0] * grid[1], dim))
        self.grid = grid
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, patches: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        pos = self.pos_embed
        if tuple(grid) != self.grid:  # another input size: interpolate the patch position embeddings
            g = pos[:, 1:].reshape(1, *self.grid, -1).permute(0, 3, 1, 2)
            g = F.interpolate(g, size=grid, mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
            pos = torch.cat((pos[:, :1], g), 1)
        x = torch.cat((self.cls_token.expand(len(patches), -1, -1), self.proj(patches)), 1)
        return x + pos


class EncoderBlock(nn.Module):
    """Pre-LN transformer block: x + Drop(MHA(LN(x))), then x + MLP(LN(x)) with GELU and dropout."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim),
                                 nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.drop(self.attn(h, h, h, need_weights=False)[0])
        return x + self.mlp(self.norm2(x))


class DecoderBlock(EncoderBlock):
    """Mirrors the encoder block (self-attention over the latent tokens), mapping latents back towards a form the
    convolutional head can turn into points."""


class ConvHead(nn.Module):
    """conv3x3 - LeakyReLU - conv3x3 - LeakyReLU - conv1x1 to 3 p^2 channels, pixel-shuffled to full resolution."""

    def __init__(self, dim: int, width: int, patch: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim, width, 3, padding=1), nn.LeakyReLU(0.1, inplace=True),
                                  nn.Conv2d(width, width, 3, padding=1), nn.LeakyReLU(0.1, inplace=True))
        self.out = nn.Conv2d(width, 3 * patch * patch, 1)
        nn.init.normal_(self.out.weight, std=VIT_OUT_INIT_STD)
        nn.init.zeros_(self.out.bias)
        self.patch = patch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.out(self.body(x)), self.patch)


class ViTEncDec(Centred):
    def __init__(self, image_hw: tuple[int, int], patch: int, blocks: int, heads: int, latent: int,
                 mlp_ratio: float = 4.0, dropout: float = 0.1, head_width: int | None = None):
        super().__init__()
        H, W = image_hw
        if H % patch or W % patch:
            raise ValueError(f"ViT input {H}x{W} must be a multiple of the patch size {patch}")
        self.patch = patch
        self.extract = PatchExtractor(patch)
        self.embed = InputEmbedding(patch, latent, (H // patch, W // patch))
        self.pos_drop = nn.Dropout(dropout)
        self.encoder = nn.ModuleList(EncoderBlock(latent, heads, mlp_ratio, dropout) for _ in range(blocks))
        self.decoder = nn.ModuleList(DecoderBlock(latent, heads, mlp_ratio, dropout) for _ in range(blocks))
        self.norm = nn.LayerNorm(latent)
        self.head = ConvHead(latent, head_width or latent, patch)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        p = self.patch
        if H % p or W % p:
            raise ValueError(f"ViT input {H}x{W} must be a multiple of the patch size {p}")
        grid = (H // p, W // p)
        t = self.pos_drop(self.embed(self.extract(x), grid))
        for blk in self.encoder:
            t = blk(t)
        for blk in self.decoder:
            t = blk(t)
        t = self.norm(t)[:, 1:]  # drop the class token
        fmap = t.transpose(1, 2).reshape(B, -1, *grid)
        return self.to_world(self.head(fmap))


def build(cfg: PointmapStudentConfig, image_hw: tuple[int, int]) -> ViTEncDec:
    return ViTEncDec(image_hw, cfg.patch_size, cfg.blocks, cfg.heads, cfg.latent, cfg.mlp_ratio, cfg.dropout,
                     cfg.vit_head_width)
