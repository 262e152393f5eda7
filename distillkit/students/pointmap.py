"""Scene-specific pointmap students (seed 000): image [B, 3, H, W] -> world pointmap [B, 3, H, W].

Three students, as in the paper (DUSt3R world-frame pointmaps distilled into small networks on 12-Scenes):

* `VanillaCNN`: 3x3 convs from 3 to 512 channels (BN + ReLU, output stride 8), then per-pixel fully connected layers
  (1x1 convs) to 3 outputs, bilinearly upsampled to the input resolution. Paper preset ~46 MB (paper: 45 MB).
* `MobileNetStudent`: a timm MobileNetV3 `features_only` backbone (strides 8/16/32 fused at stride 8) + the same
  per-pixel head. Backbone frozen (BN statistics too) or fine-tuned; weights from a local path / URL when given,
  otherwise random init (nothing is downloaded; `pretrained_loaded` says which).
* `ViTEncDec`: patch extractor (unfold), linear embedding + class token + learned positional embeddings, encoder
  and decoder blocks (pre-LN multi-head self-attention and GELU MLP, dropout, residuals), then a conv head with
  LeakyReLU whose last 1x1 conv predicts every pixel of its patch (pixel shuffle: full resolution, no upsampling).

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

import logging
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from distillkit.training.checkpoint import load_matching
from distillkit.training.pointmap.config import PointmapStudentConfig

log = logging.getLogger("distillkit")
VIT_OUT_INIT_STD = 1e-3  # std of the ViT's last (3 p^2-output) layer: starts at the scene mean


def model_size_mb(model: nn.Module) -> float:
    """Bytes of all parameters and buffers (fp32 as stored) / 1e6."""
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers())) / 1e6


class _Centred(nn.Module):
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


def _pixel_head(c_in: int, widths: list[int]) -> nn.Sequential:
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


class _PixelHeadStudent(_Centred):
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


class VanillaCNN(_PixelHeadStudent):
    def __init__(self, widths: list[int], strides: list[int], head_widths: list[int]):
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for w, s in zip(widths, strides):
            layers += [nn.Conv2d(c, w, 3, stride=s, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            c = w
        self.encoder = nn.Sequential(*layers)
        self.head = _pixel_head(c, head_widths)
        self.stride = math.prod(strides)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


def load_backbone_weights(backbone: nn.Module, source: str) -> tuple[int, int]:
    """Load timm-format weights (local path or fsspec/HTTP URL; .safetensors or a torch pickle read with
    weights_only) into a features_only backbone. Returns (tensors loaded, tensors of the backbone)."""
    import io

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


class MobileNetStudent(_PixelHeadStudent):
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
        self.head = _pixel_head(sum(self.backbone.feature_info.channels()), head_widths)
        if freeze_backbone:
            self.freeze_encoder()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        size = feats[0].shape[-2:]
        return torch.cat([feats[0]] + [F.interpolate(f, size=size, mode="bilinear", align_corners=False)
                                       for f in feats[1:]], 1)


# ------------------------------------------------------------------------------------------------ ViT enc-dec
class PatchExtractor(nn.Module):
    def __init__(self, patch: int):
        super().__init__()
        self.patch = patch

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, 3, H, W] -> [B, N, 3 p^2]
        return F.unfold(x, self.patch, stride=self.patch).transpose(1, 2)


class InputEmbedding(nn.Module):
    def __init__(self, patch: int, dim: int, grid: tuple[int, int]):
        super().__init__()
        self.proj = nn.Linear(3 * patch * patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid[0] * grid[1], dim))
        self.grid = grid
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, patches: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        pos = self.pos_embed
        if tuple(grid) != self.grid:  # another input size: interpolate the patch position embeddings
            g = pos[:, 1:].reshape(1, *self.grid, -1).permute(0, 3, 1, 2)
            g = F.interpolate(g, size=grid, mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
            pos = torch.cat((pos[:, :1], g), 1)
        x = torch.cat((self.cls_token.expand(len(patches), -1, -1), self.proj(patches)), 1)
        return x + pos


class EncoderBlock(nn.Module):
    """Pre-LN transformer block: x + Drop(MHA(LN(x))), then x + MLP(LN(x)) with GELU and dropout."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim),
                                 nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.drop(self.attn(h, h, h, need_weights=False)[0])
        return x + self.mlp(self.norm2(x))


class DecoderBlock(EncoderBlock):
    """Mirrors the encoder block (self-attention over the latent tokens), mapping latents back towards a form the
    convolutional head can turn into points."""


class ConvHead(nn.Module):
    """conv3x3 - LeakyReLU - conv3x3 - LeakyReLU - conv1x1 to 3 p^2 channels, pixel-shuffled to full resolution."""

    def __init__(self, dim: int, width: int, patch: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim, width, 3, padding=1), nn.LeakyReLU(0.1, inplace=True),
                                  nn.Conv2d(width, width, 3, padding=1), nn.LeakyReLU(0.1, inplace=True))
        self.out = nn.Conv2d(width, 3 * patch * patch, 1)
        nn.init.normal_(self.out.weight, std=VIT_OUT_INIT_STD)
        nn.init.zeros_(self.out.bias)
        self.patch = patch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.out(self.body(x)), self.patch)


class ViTEncDec(_Centred):
    def __init__(self, image_hw: tuple[int, int], patch: int, blocks: int, heads: int, latent: int,
                 mlp_ratio: float = 4.0, dropout: float = 0.1, head_width: int | None = None):
        super().__init__()
        H, W = image_hw
        if H % patch or W % patch:
            raise ValueError(f"ViT input {H}x{W} must be a multiple of the patch size {patch}")
        self.patch = patch
        self.extract = PatchExtractor(patch)
        self.embed = InputEmbedding(patch, latent, (H // patch, W // patch))
        self.pos_drop = nn.Dropout(dropout)
        self.encoder = nn.ModuleList(EncoderBlock(latent, heads, mlp_ratio, dropout) for _ in range(blocks))
        self.decoder = nn.ModuleList(DecoderBlock(latent, heads, mlp_ratio, dropout) for _ in range(blocks))
        self.norm = nn.LayerNorm(latent)
        self.head = ConvHead(latent, head_width or latent, patch)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        p = self.patch
        if H % p or W % p:
            raise ValueError(f"ViT input {H}x{W} must be a multiple of the patch size {p}")
        grid = (H // p, W // p)
        t = self.pos_drop(self.embed(self.extract(x), grid))
        for blk in self.encoder:
            t = blk(t)
        for blk in self.decoder:
            t = blk(t)
        t = self.norm(t)[:, 1:]  # drop the class token
        fmap = t.transpose(1, 2).reshape(B, -1, *grid)
        return self.to_world(self.head(fmap))


def build_pointmap_student(cfg: PointmapStudentConfig, image_hw: tuple[int, int]) -> _Centred:
    if cfg.kind == "cnn":
        m = VanillaCNN(cfg.cnn_widths, cfg.cnn_strides, cfg.head_widths)
        if cfg.freeze_backbone:
            m.freeze_encoder()
        return m
    if cfg.kind == "mobilenet":
        return MobileNetStudent(cfg.mobilenet_variant, cfg.head_widths, cfg.pretrained, cfg.freeze_backbone)
    return ViTEncDec(image_hw, cfg.patch_size, cfg.blocks, cfg.heads, cfg.latent, cfg.mlp_ratio, cfg.dropout,
                     cfg.vit_head_width)


def describe(model: nn.Module) -> dict:
    return {"class": type(model).__name__, "params": sum(p.numel() for p in model.parameters()),
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "size_mb": round(model_size_mb(model), 3),
            "pretrained_loaded": getattr(model, "pretrained_loaded", None)}
