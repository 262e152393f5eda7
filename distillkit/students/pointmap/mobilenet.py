"""`MobileNetStudent`: a timm MobileNetV3 `features_only` backbone (strides 8/16/32 fused at stride 8) + the
per-pixel head. Backbone frozen (BN statistics too) or fine-tuned; weights from a local path / URL when given,
otherwise random init (nothing is downloaded; `pretrained_loaded` says which)."""

from __future__ import annotations

import io
import logging

import torch
import torch.nn as nn
import torch.nn.functional as F

from distillkit.students.pointmap.base import PixelHeadStudent, pixel_head
from distillkit.students.pointmap.config import PointmapStudentConfig
from distillkit.students.weights import load_matching

log = logging.getLogger("distillkit")


def load_backbone_weights(backbone: nn.Module, source: str) -> tuple[int, int]:
    """Load timm-format weights (local path or fsspec/HTTP URL; .safetensors or a torch pickle read with
    weights_only) into a features_only backbone. Returns (tensors loaded, tensors of the backbone)."""
    import fsspec

    with fsspec.open(source, "rb") as f:
        raw = f.read()
    if source.endswith(".safetensors"):
        from safetensors.torch import load as load_st

        state = load_st(raw)
    else:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
    n, skipped = load_matching(backbone, state)
    if not n:
        raise ValueError(f"{source}: no tensor matches the backbone (expected timm MobileNetV3 keys, e.g. "
                         f"{next(iter(backbone.state_dict()))})")
    return n, n + len(skipped)


class MobileNetStudent(PixelHeadStudent):
    def __init__(self, variant: str, head_widths: list[int], pretrained: str | None = None,
                 freeze_backbone: bool = False):
        super().__init__()
        import timm

        self.backbone = timm.create_model(variant, pretrained=False, features_only=True, out_indices=(2, 3, 4))
        self.pretrained_loaded = False
        if pretrained:
            n, total = load_backbone_weights(self.backbone, pretrained)
            self.pretrained_loaded = True
            log.info("mobilenet backbone: %d/%d tensors from %s", n, total, pretrained)
        else:
            log.warning("mobilenet backbone %s is RANDOMLY INITIALISED (no `pretrained` path/URL given; nothing is "
                        "downloaded)", variant)
        self.stride = self.backbone.feature_info.reduction()[0]
        self.head = pixel_head(sum(self.backbone.feature_info.channels()), head_widths)
        if freeze_backbone:
            self.freeze_encoder()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        size = feats[0].shape[-2:]
        return torch.cat([feats[0]] + [F.interpolate(f, size=size, mode="bilinear", align_corners=False)
                                       for f in feats[1:]], 1)


def build(cfg: PointmapStudentConfig, image_hw: tuple[int, int]) -> MobileNetStudent:
    return MobileNetStudent(cfg.mobilenet_variant, cfg.head_widths, cfg.pretrained, cfg.freeze_backbone)
