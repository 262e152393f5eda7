"""The pointmap regression loss: per-pixel weights (mask, confidence) and the weighted MSE / L2 to the targets."""

from __future__ import annotations

import torch


def pixel_weights(mask: torch.Tensor, conf: torch.Tensor | None, conf_weight: bool = False,
                  min_conf: float = 0.0) -> torch.Tensor:
    """Per-pixel loss weight: validity mask, optionally x confidence and thresholded on it."""
    w = mask.float()
    if conf is not None:
        if min_conf > 0:
            w = w * (conf >= min_conf).float()
        if conf_weight:
            w = w * conf.float()
    return w


def pointmap_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, kind: str = "mse",
                  target_scale: float = 1.0) -> torch.Tensor:
    """Weighted mean over pixels of the squared error per coordinate ('mse') or the Euclidean distance ('l2'),
    with predictions and targets multiplied by `target_scale`. pred/target [..., 3] channels-last; weight [...].
    Pixels with weight 0 (invalid) never contribute, even when their target is NaN."""
    valid = weight > 0
    diff = (pred.float() - torch.where(valid[..., None], target.float(), pred.detach().float())) * target_scale
    err = diff.pow(2).mean(-1) if kind == "mse" else diff.pow(2).sum(-1).clamp_min(1e-12).sqrt()
    return (err * weight).sum() / weight.sum().clamp_min(1e-12)
