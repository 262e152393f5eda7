"""Transformer blocks of the CroCo/DUSt3R encoder and decoders (parameter names as in the releases)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distillkit.teachers.croco.rope import apply_rope

Rope = tuple[torch.Tensor, torch.Tensor]  # (cos, sin) from rope.rope_tables

LN_EPS = 1e-6  # every LayerNorm of the released models; 1e-5 is numerically visible


def layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=LN_EPS)


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)  # (B, N, C) -> (B, h, N, C/h)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rope_q: Rope, rope_k: Rope) -> torch.Tensor:
    q, k = apply_rope(q, *rope_q), apply_rope(k, *rope_k)
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, out: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, out or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # exact (erf) GELU, as trained


class Attention(nn.Module):
    """Self-attention with one fused qkv projection (output order q, k, v)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: Rope) -> torch.Tensor:
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        return self.proj(_attend(q, k, v, rope, rope))


class CrossAttention(nn.Module):
    """Queries from the own tokens, keys/values from the other view (separate projections)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.projq = nn.Linear(dim, dim)
        self.projk = nn.Linear(dim, dim)
        self.projv = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mem: torch.Tensor, rope_x: Rope, rope_mem: Rope) -> torch.Tensor:
        q = _split_heads(self.projq(x), self.heads)
        k = _split_heads(self.projk(mem), self.heads)
        v = _split_heads(self.projv(mem), self.heads)
        return self.proj(_attend(q, k, v, rope_x, rope_mem))


class EncoderBlock(nn.Module):
    """Pre-norm ViT block (no LayerScale)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = layer_norm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = layer_norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, rope: Rope) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    """Self-attention, cross-attention to the (normed) other view, MLP. Registration order = release key order."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = layer_norm(dim)
        self.attn = Attention(dim, heads)
        self.cross_attn = CrossAttention(dim, heads)
        self.norm2 = layer_norm(dim)
        self.norm3 = layer_norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_y = layer_norm(dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor, rope_x: Rope, rope_y: Rope) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope_x)
        x = x + self.cross_attn(self.norm2(x), self.norm_y(y), rope_x, rope_y)
        return x + self.mlp(self.norm3(x))
