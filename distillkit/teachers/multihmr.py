"""Multi-HMR's image encoder (DINOv2 ViT-L/14, no registers) as a timm ``vit_large_patch14_dinov2``.

Multi-HMR checkpoints keep the network under ``'model_state_dict'``; the encoder keys are the official DINOv2
ones (``cls_token``, ``pos_embed`` for 518 px, ``mask_token``, ``blocks.N.ls1.gamma``, ...) prefixed with
``backbone.encoder.`` (original models) or ``encoder.backbone.`` (anny variant). We cut that prefix and let
timm's own DINOv2 conversion (``checkpoint_filter_fn``: drops ``mask_token``, resamples ``pos_embed`` when the
model is built for another image size) produce timm names.
"""

from __future__ import annotations

from collections.abc import Mapping

import timm
import torch
from timm.models.vision_transformer import checkpoint_filter_fn

TIMM_ARCH = "vit_large_patch14_dinov2"
PREFIXES = ("backbone.encoder.", "encoder.backbone.")
STATE_KEYS = ("model_state_dict", "model", "state_dict")


def encoder_state_dict(checkpoint: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """The DINOv2 encoder's tensors of a Multi-HMR checkpoint (or its state dict), prefix removed."""
    sd = checkpoint
    for key in STATE_KEYS:
        if isinstance(sd.get(key), Mapping):
            sd = sd[key]
            break
    for prefix in PREFIXES:
        sub = {k[len(prefix):]: v for k, v in sd.items() if isinstance(k, str) and k.startswith(prefix)}
        if sub:
            return sub
    raise ValueError(f"no Multi-HMR encoder weights: no key starts with {' or '.join(PREFIXES)}")


def to_timm(encoder_sd: Mapping[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Official DINOv2 names -> timm names for ``model`` (timm mutates its input, so it gets a copy)."""
    return checkpoint_filter_fn(dict(encoder_sd), model)


def create_encoder(img_size: int | tuple[int, int] = 518, **kwargs) -> torch.nn.Module:
    """The timm model Multi-HMR's encoder maps onto (no classifier)."""
    return timm.create_model(TIMM_ARCH, pretrained=False, num_classes=0, img_size=img_size, **kwargs)


def load_encoder(model: torch.nn.Module, checkpoint: Mapping[str, object], ref: str = "<checkpoint>") -> None:
    """Strictly load a Multi-HMR checkpoint's encoder into a timm DINOv2 model; ValueError names any mismatch."""
    sd = to_timm(encoder_state_dict(checkpoint), model)
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    mismatched = [f"{k} (checkpoint {tuple(sd[k].shape)}, model {tuple(v.shape)})"
                  for k, v in expected.items() if k in sd and sd[k].shape != v.shape]
    problems = (("missing key(s)", missing), ("unexpected key(s)", unexpected), ("shape mismatch(es)", mismatched))
    parts = [f"{len(keys)} {what}: {', '.join(keys[:10])}{' …' if len(keys) > 10 else ''}"
             for what, keys in problems if keys]
    if parts:
        raise ValueError(f"Multi-HMR encoder in {ref} does not match {TIMM_ARCH}: " + "; ".join(parts))
    model.load_state_dict(sd, strict=True)
