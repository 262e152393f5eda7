"""Prediction heads of DUSt3R / MASt3R. Each maps the decoder's token list to a raw (B, C, H, W) map.

The token list has ``dec_depth + 1`` entries: the encoder output (after ``enc_norm``) then every decoder
block output (the last one after ``dec_norm``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from distillkit.teachers.croco.blocks import Mlp

# Released DPT widths; the tiny fixtures override them (the official factory hard-codes these).
DPT_FEATURE_DIM = 256
DPT_LAST_DIM = 128
DPT_LAYER_DIMS = (96, 192, 384, 768)


def dpt_hooks(dec_depth: int) -> tuple[int, int, int, int]:
    """Token-list entries fed to the DPT: encoder output, then blocks at 1/2, 3/4 and the end."""
    return (0, dec_depth * 2 // 4, dec_depth * 3 // 4, dec_depth)


def tokens_to_map(x: torch.Tensor, hp: int, wp: int) -> torch.Tensor:
    return x.transpose(1, 2).unflatten(-1, (hp, wp))  # (B, N, C) -> (B, C, hp, wp)


def unpatchify(x: torch.Tensor, hp: int, wp: int, patch: int) -> torch.Tensor:
    """(B, N, C*p*p) -> (B, C, hp*p, wp*p); feature c*p*p + i*p + j goes to channel c, pixel offset (i, j)."""
    return F.pixel_shuffle(tokens_to_map(x, hp, wp), patch)


def _upsample2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class Upsample2(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _upsample2(x)


class LinearHead(nn.Module):
    """``head_type='linear'``: one Linear on the last tokens, pixel-shuffled to full resolution."""

    def __init__(self, dec_dim: int, out_channels: int = 4, patch_size: int = 16):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Linear(dec_dim, out_channels * patch_size**2)

    def forward(self, tokens: Sequence[torch.Tensor], hw: tuple[int, int]) -> torch.Tensor:
        p = self.patch_size
        return unpatchify(self.proj(tokens[-1]), hw[0] // p, hw[1] // p, p)


class ResidualConvUnit(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))  # not in-place: the skip is the raw x


class FusionBlock(nn.Module):
    """``out_conv(up2(RCU2(main + RCU1(skip))))``; ``out_conv`` is registered first, as in the releases."""

    def __init__(self, features: int):
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        return self.out_conv(_upsample2(self.resConfUnit2(x)))


class Scratch(nn.Module):
    """The 3x3 projections to ``feature_dim`` and the four fusion blocks.

    ``layer_rn`` holds the *same* convolutions as ``layer{1..4}_rn``: the releases register them under both
    names, so both appear in ``state_dict()`` exactly as in the ``.pth`` files.
    """

    def __init__(self, layer_dims: Sequence[int], features: int):
        super().__init__()
        convs = [nn.Conv2d(c, features, 3, padding=1, bias=False) for c in layer_dims]
        for i, conv in enumerate(convs, 1):
            self.add_module(f"layer{i}_rn", conv)
        self.layer_rn = nn.ModuleList(convs)
        for i in range(1, 5):
            self.add_module(f"refinenet{i}", FusionBlock(features))


def _reassemble(in_dim: int, out_dim: int, level: int) -> nn.Sequential:
    """1x1 projection, then resampling to 4x, 2x, 1x, 1/2x the token grid for levels 0..3."""
    proj = nn.Conv2d(in_dim, out_dim, 1)
    if level == 0:
        return nn.Sequential(proj, nn.ConvTranspose2d(out_dim, out_dim, 4, stride=4))
    if level == 1:
        return nn.Sequential(proj, nn.ConvTranspose2d(out_dim, out_dim, 2, stride=2))
    if level == 2:
        return nn.Sequential(proj)
    return nn.Sequential(proj, nn.Conv2d(out_dim, out_dim, 3, stride=2, padding=1))


class DPT(nn.Module):
    """DPT adapter of DUSt3R (keys ``scratch.*``, ``head.{0,2,4}``, ``act_postprocess.{0..3}``)."""

    def __init__(self, enc_dim: int, dec_dim: int, dec_depth: int, out_channels: int = 4, patch_size: int = 16,
                 feature_dim: int = DPT_FEATURE_DIM, last_dim: int = DPT_LAST_DIM,
                 layer_dims: Sequence[int] = DPT_LAYER_DIMS, hooks: Sequence[int] | None = None):
        super().__init__()
        if patch_size != 16:
            raise ValueError("the DPT head's 4x/2x/1x/0.5x resampling and 16x output assume patch size 16")
        self.hooks = tuple(hooks) if hooks is not None else dpt_hooks(dec_depth)
        self.patch_size = patch_size
        self.scratch = Scratch(layer_dims, feature_dim)
        self.head = nn.Sequential(
            nn.Conv2d(feature_dim, feature_dim // 2, 3, padding=1), Upsample2(),
            nn.Conv2d(feature_dim // 2, last_dim, 3, padding=1), nn.ReLU(),
            nn.Conv2d(last_dim, out_channels, 1),
        )
        in_dims = (enc_dim, dec_dim, dec_dim, dec_dim)
        self.act_postprocess = nn.ModuleList(
            _reassemble(i, o, level) for level, (i, o) in enumerate(zip(in_dims, layer_dims)))

    def forward(self, tokens: Sequence[torch.Tensor], hw: tuple[int, int]) -> torch.Tensor:
        hp, wp = hw[0] // self.patch_size, hw[1] // self.patch_size
        s = self.scratch
        lv = [s.layer_rn[i](post(tokens_to_map(tokens[h], hp, wp)))
              for i, (h, post) in enumerate(zip(self.hooks, self.act_postprocess))]
        # level 3 went through a stride-2 conv: crop back to the token grid when a side is odd
        p = s.refinenet4(lv[3])[:, :, :hp, :wp]
        p = s.refinenet3(p, lv[2])
        p = s.refinenet2(p, lv[1])
        p = s.refinenet1(p, lv[0])
        return self.head(p)


class DPTHead(nn.Module):
    """``head_type='dpt'``: pts3d (3) + conf (1)."""

    def __init__(self, enc_dim: int, dec_dim: int, dec_depth: int, out_channels: int = 4, **dpt_kw):
        super().__init__()
        self.dpt = DPT(enc_dim, dec_dim, dec_depth, out_channels, **dpt_kw)

    def forward(self, tokens: Sequence[torch.Tensor], hw: tuple[int, int]) -> torch.Tensor:
        return self.dpt(tokens, hw)


class CatMlpDPTHead(nn.Module):
    """MASt3R ``head_type='catmlp+dpt'``: DPT for pts3d+conf, and a per-patch MLP on
    ``concat(encoder tokens, last decoder tokens)`` for descriptors (+ descriptor confidence)."""

    def __init__(self, enc_dim: int, dec_dim: int, dec_depth: int, desc_dim: int = 24, two_confs: bool = True,
                 hidden_dim_factor: float = 4.0, patch_size: int = 16, **dpt_kw):
        super().__init__()
        self.patch_size = patch_size
        self.dpt = DPT(enc_dim, dec_dim, dec_depth, 4, patch_size, **dpt_kw)
        idim = enc_dim + dec_dim
        out = (desc_dim + int(two_confs)) * patch_size**2
        self.head_local_features = Mlp(idim, int(hidden_dim_factor * idim), out)

    def forward(self, tokens: Sequence[torch.Tensor], hw: tuple[int, int]) -> torch.Tensor:
        p = self.patch_size
        local = self.head_local_features(torch.cat((tokens[0], tokens[-1]), dim=-1))
        return torch.cat((self.dpt(tokens, hw), unpatchify(local, hw[0] // p, hw[1] // p, p)), dim=1)
