"""What the pointmap student families share: centring on the scene, the per-pixel head, size and description.

Offsets from the scene mean: every student outputs ``centre + scale * net(x)``, with ``centre`` / ``scale`` the mean
and RMS spread of the scene's training targets, stored as buffers (so a checkpoint is self-contained and predicts
in world units). Why: world coordinates of a real scene sit far from the origin and in arbitrary units (12-Scenes
frames are metres, several metres from the origin; a DUSt3R alignment can be anywhere). Regressing raw coordinates
makes the network's first job to learn a large constant bias and ties the useful lr to the scene's units; regressing
unit-scale offsets from the mean starts the (near-zero-initialised) network at the best constant predictor and
makes one set of hyper-parameters work for every scene and unit (the ACE head does the same with the mean camera
centre). It also makes the paper's x100 target scaling a pure loss-scale choice.

The cnn / mobilenet students expose ``features(x) -> [B, C, h, w]`` and a per-pixel ``head`` (1x1 convs), so the
pixel sampler can train the head on random pixels (`predict_at`, exactly equal to `forward` at those pixels).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def model_size_mb(model: nn.Module) -> float:
    """Bytes of all parameters and buffers (fp32 as stored) / 1e6."""
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers())) / 1e6


def describe(model: nn.Module) -> dict:
    return {"class": type(model).__name__, "params": sum(p.numel() for p in model.parameters()),
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "size_mb": round(model_size_mb(model), 3),
            "pretrained_loaded": getattr(model, "pretrained_loaded", None)}


class Centred(nn.Module):
    """``centre + scale * offset`` in world units."""

    def __init__(self):
        super().__init__()
        self.register_buffer("centre", torch.zeros(3))
        self.register_buffer("scale", torch.ones(()))

    def set_scene(self, centre, scale) -> None:
        self.centre.copy_(torch.as_tensor(centre, dtype=torch.float32))
        self.scale.fill_(float(scale))

    def to_world(self, offset: torch.Tensor, channel_dim: int = 1) -> torch.Tensor:
        shape = [1] * offset.ndim
        shape[channel_dim] = 3
        return self.centre.view(shape) + self.scale * offset.float()


def channels_last(model: nn.Module) -> nn.Module:
    """A convolutional student in channels-last memory (oneDNN / cuDNN run its convolutions without layout
    transposes: ~5-10% faster training steps on the CPU, measured with small_cnn). ``model.channels_last`` tells
    the image sampler to hand it channels-last input. Others (the ViT) are returned as they are."""
    if isinstance(model, PixelHeadStudent):
        model.to(memory_format=torch.channels_last)
        model.channels_last = True
    return model


def pixel_head(c_in: int, widths: list[int]) -> nn.Sequential:
    """Per-pixel fully connected layers (1x1 convs with ReLU) of the given hidden widths, then 3 outputs."""
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Conv2d(c_in, w, 1), nn.ReLU(inplace=True)]
        c_in = w
    last = nn.Conv2d(c_in, 3, 1)  # default init (offsets ~0.1-0.5 scale): a near-zero init slowed the CNNs down
    nn.init.zeros_(last.bias)
    return nn.Sequential(*layers, last)


def _bilinear_taps(coord: torch.Tensor, n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices (i0, i1) and weight of i1 that `F.interpolate(bilinear, align_corners=False)` uses for output pixel
    `coord` when resizing n_in -> n_out samples."""
    src = ((coord.float() + 0.5) * (n_in / n_out) - 0.5).clamp_min(0)
    i0 = src.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    return i0, i1, src - i0


class PixelHeadStudent(Centred):
    """A feature extractor at some stride + a per-pixel head, upsampled bilinearly to the input resolution."""

    head: nn.Sequential

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        off = self.head(self.features(x))
        off = F.interpolate(off.float(), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.to_world(off)

    def head_points(self, feats: torch.Tensor) -> torch.Tensor:
        """[N, C] features -> [N, 3] normalised offsets (the head as a per-pixel MLP)."""
        return self.head(feats[:, :, None, None])[:, :, 0, 0]

    def predict_at(self, feats: torch.Tensor, b: torch.Tensor, y: torch.Tensor, x: torch.Tensor,
                   hw: tuple[int, int]) -> torch.Tensor:
        """World points [N, 3] at pixels (b, y, x) of input size `hw`, from feature maps [B, C, h, w]: the head on
        the 4 bilinear taps, blended with `forward`'s weights, so this equals `forward(x)[b, :, y, x]` exactly."""
        flat = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1])
        return self.predict_flat(flat, tuple(feats.shape[-2:]), b, y, x, hw)

    def predict_flat(self, flat: torch.Tensor, fhw: tuple[int, int], b: torch.Tensor, y: torch.Tensor,
                     x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """`predict_at` on channels-last features flattened to [B * h * w, C] (a precomputed feature buffer)."""
        h, w = fhw
        y0, y1, wy = _bilinear_taps(y, h, hw[0])
        x0, x1, wx = _bilinear_taps(x, w, hw[1])
        base = b * (h * w)
        idx = torch.stack((base + y0 * w + x0, base + y0 * w + x1, base + y1 * w + x0, base + y1 * w + x1))
        out = self.head_points(flat[idx.reshape(-1)]).float().view(4, -1, 3)
        wy, wx = wy[:, None], wx[:, None]
        off = (out[0] * (1 - wx) + out[1] * wx) * (1 - wy) + (out[2] * (1 - wx) + out[3] * wx) * wy
        return self.to_world(off, channel_dim=1)

    def encoder_trainable(self) -> bool:
        return any(p.requires_grad for n, p in self.named_parameters() if not n.startswith("head."))

    def freeze_encoder(self) -> None:
        """Freeze everything but the per-pixel head (weights and BN statistics)."""
        self.frozen = True
        for n, p in self.named_parameters():
            if not n.startswith("head."):
                p.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if getattr(self, "frozen", False):
            for name, child in self.named_children():
                if name != "head":
                    child.eval()  # frozen means frozen BN statistics as well
        return self
