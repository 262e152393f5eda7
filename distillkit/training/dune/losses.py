"""DUNE/UNIC distillation loss: per token 0.5 * (1 - cos) + 0.5 * smooth-L1 (beta 1, mean over channels)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_loss(student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[..., C] x [..., C] -> [...] per-token loss, computed in float32."""
    s, t = student.float(), target.float()
    cos = F.cosine_similarity(s, t, dim=-1)
    l1 = F.smooth_l1_loss(s, t, beta=1.0, reduction="none").mean(dim=-1)
    return 0.5 * (1.0 - cos) + 0.5 * l1


def teacher_loss(cls_s: torch.Tensor | None, patch_s: torch.Tensor, cls_t: torch.Tensor | None,
                 patch_t: torch.Tensor) -> torch.Tensor:
    """Per-image loss for one teacher: mean over the token types it has (CLS, patch-mean). -> [B]"""
    parts = [token_loss(patch_s, patch_t).flatten(1).mean(dim=1)]
    if cls_s is not None and cls_t is not None:
        parts.append(token_loss(cls_s, cls_t))
    return torch.stack(parts).mean(dim=0)


def cosine(student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(student.float(), target.float(), dim=-1)
