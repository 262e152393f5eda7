"""Which teacher trains on which image, and with what weight: data sharing and teacher dropping (UNIC/DUNE).

Coefficients c[t, i] multiply the per-image loss L[t, i]; the batch loss per image is sum_t c L / sum_t c.
"""

from __future__ import annotations

import torch


def sharing_mask(teachers: list[str], sample_groups: list[str], own_teacher: dict[str, str | None],
                 available: dict[str, torch.Tensor], strategy: str, generic_group: str | None) -> torch.Tensor:
    """[T, B] 0/1: full = every teacher with targets for the image; none = only the image group's own teacher;
    generic = like none, except images of the generic group train every teacher."""
    t_count, b = len(teachers), len(sample_groups)
    mask = torch.stack([available[t].float() for t in teachers]) if t_count else torch.zeros(0, b)
    if strategy == "full":
        return mask
    keep = torch.zeros(t_count, b)
    for i, g in enumerate(sample_groups):
        for j, t in enumerate(teachers):
            own = own_teacher.get(g)
            if own is None or t == own or (strategy == "generic" and g == generic_group):
                keep[j, i] = 1.0
    return mask * keep


def lowest_loss_drop(losses: torch.Tensor, mask: torch.Tensor, p: float, generator: torch.Generator | None = None
                     ) -> torch.Tensor:
    """UNIC's teacher dropping: per image, the teacher with the highest loss always stays; every other active
    teacher is dropped with probability p. losses, mask: [T, B]. Returns coefficients (no gradient)."""
    with torch.no_grad():
        masked = torch.where(mask > 0, losses.detach(), torch.full_like(losses, -float("inf")))
        worst = masked.argmax(dim=0)
        keep = (torch.rand(losses.shape, generator=generator) >= p).float()
        keep[worst, torch.arange(losses.shape[1])] = 1.0
        return mask * keep


def combine(losses: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """Per-image loss: sum_t c L / sum_t c (images without any active teacher contribute 0)."""
    denom = coef.sum(dim=0)
    return (coef * losses).sum(dim=0) / denom.clamp_min(1.0)
