"""`VanillaCNN`: 3x3 convs from 3 to 512 channels (BN + ReLU, output stride 8), then per-pixel fully connected layers
(1x1 convs) to 3 outputs, bilinearly upsampled to the input resolution. Paper preset ~46 MB (paper: 45 MB)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from distillkit.students.pointmap.base import PixelHeadStudent, pixel_head
from distillkit.students.pointmap.config import PointmapStudentConfig


class VanillaCNN(PixelHeadStudent):
    def __init__(self, widths: list[int], strides: list[int], head_widths: list[int]):
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for w, s in zip(widths, strides):
            layers += [nn.Conv2d(c, w, 3, stride=s, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            c = w
        self.encoder = nn.Sequential(*layers)
        self.head = pixel_head(c, head_widths)
        self.stride = math.prod(strides)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


def build(cfg: PointmapStudentConfig, image_hw: tuple[int, int]) -> VanillaCNN:
    model = VanillaCNN(cfg.cnn_widths, cfg.cnn_strides, cfg.head_widths)
    if cfg.freeze_backbone:
        model.freeze_encoder()
    return model
