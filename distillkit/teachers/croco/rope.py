"""2-D rotary position embedding of CroCo v2 / DUSt3R (``pos_embed='RoPE100'``).

Each head's channels are split in two halves: the first is rotated by the token's patch row, the
second by its column. Inside a half of size d, channel k is paired with channel k + d/2
(split-half / NeoX form), angle ``pos * base**(-2k/d)``.
"""

from __future__ import annotations

import torch


def grid_positions(hp: int, wp: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(hp*wp, 2) int64 (row, col) of a row-major patch grid."""
    rows = torch.arange(hp, device=device).repeat_interleave(wp)
    cols = torch.arange(wp, device=device).repeat(hp)
    return torch.stack((rows, cols), dim=-1)


def rope_tables(pos: torch.Tensor, head_dim: int, base: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape pos.shape[:-1] + (head_dim,), ready to multiply q or k.

    Angles are formed in float32 and only cos/sin are taken in ``dtype``: that is what the released
    models were trained with, and float64 runs match the reference to ~1e-14 only this way.
    """
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs a head dim divisible by 4, got {head_dim}")
    d = head_dim // 2
    inv_freq = 1.0 / (base ** (torch.arange(0, d, 2, device=pos.device).float() / d))
    angles = pos.float().unsqueeze(-1) * inv_freq  # (..., N, 2, d/2)
    angles = torch.cat((angles, angles), dim=-1).to(dtype).flatten(-2)  # (..., N, 2*d): rows then cols
    if pos.dim() == 3:  # per-sample positions: add the head axis
        angles = angles.unsqueeze(1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, heads, N, D); within each axis half, (a, b) -> (a cos - b sin, b cos + a sin)."""
    quarter = x.shape[-1] // 4
    a, b = x.unflatten(-1, (2, 2, quarter)).unbind(-2)  # a, b: (..., 2 axes, quarter)
    rotated = torch.stack((-b, a), dim=-2).flatten(-3)
    return x * cos + rotated * sin
