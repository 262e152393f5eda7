"""DUSt3R / MASt3R network (``AsymmetricCroCo3DStereo`` / ``AsymmetricMASt3R``), inference only.

Shared ViT encoder with 2-D RoPE, two decoders that cross-attend to each other at every block, one head per
decoder. Output: view-1 points in view-1's camera frame, view-2 points in view-1's frame, confidences
(+ MASt3R descriptors). Parameter names follow the released checkpoints exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from distillkit.teachers.croco.blocks import DecoderBlock, EncoderBlock, layer_norm
from distillkit.teachers.croco.heads import DPT_FEATURE_DIM, DPT_LAST_DIM, DPT_LAYER_DIMS, CatMlpDPTHead, DPTHead, LinearHead, dpt_hooks
from distillkit.teachers.croco.rope import grid_positions, rope_tables

INF = math.inf
Mode = tuple[str, float, float]


@dataclass(frozen=True)
class CroCoConfig:
    """Architecture + output activations. Defaults are the released ViT-L encoder / ViT-B decoder values."""

    head_type: str = "dpt"  # 'linear' | 'dpt' | 'catmlp+dpt'
    enc_embed_dim: int = 1024
    enc_depth: int = 24
    enc_num_heads: int = 16
    dec_embed_dim: int = 768
    dec_depth: int = 12
    dec_num_heads: int = 12
    patch_size: int = 16
    mlp_ratio: float = 4.0
    rope_base: float = 100.0
    depth_mode: Mode = ("exp", -INF, INF)
    conf_mode: Mode = ("exp", 1.0, INF)
    # MASt3R only: descriptor channels, whether a separate descriptor confidence is predicted, its activation
    desc_dim: int = 0
    two_confs: bool = False
    desc_conf_mode: Mode | None = None
    # head widths (the official factory hard-codes the released values; tiny test models override them)
    dpt_feature_dim: int = DPT_FEATURE_DIM
    dpt_last_dim: int = DPT_LAST_DIM
    dpt_layer_dims: tuple[int, ...] = DPT_LAYER_DIMS
    local_mlp_hidden_factor: float = 4.0
    img_size: tuple[int, int] = (512, 512)  # training resolution; informational, inference takes any multiple of 16
    arch: str = field(default="AsymmetricCroCo3DStereo", compare=False)

    def __post_init__(self):
        if self.head_type not in ("linear", "dpt", "catmlp+dpt"):
            raise ValueError(f"unsupported head_type {self.head_type!r}")
        if (self.desc_dim > 0) != (self.head_type == "catmlp+dpt"):
            raise ValueError("descriptors (output_mode 'pts3d+descN') go with head_type 'catmlp+dpt' only")
        _check_depth_mode(self.depth_mode)
        for m in (self.conf_mode, self.desc_conf_mode):
            if m is not None:
                _check_conf_mode(m)

    @property
    def hooks(self) -> tuple[int, int, int, int]:
        return dpt_hooks(self.dec_depth)

    @property
    def output_mode(self) -> str:
        return f"pts3d+desc{self.desc_dim}" if self.desc_dim else "pts3d"


# ---------------------------------------------------------------------------------------------- activations
def _check_depth_mode(mode: Mode) -> None:
    kind, vmin, vmax = mode
    if kind not in ("linear", "square", "exp") or (vmin, vmax) != (-INF, INF):
        raise ValueError(f"unsupported depth_mode {mode!r} (the released models use ('exp', -inf, inf))")


def _check_conf_mode(mode: Mode) -> None:
    if mode[0] not in ("exp", "sigmoid"):
        raise ValueError(f"unsupported confidence mode {mode!r}")


def activate_points(xyz: torch.Tensor, mode: Mode) -> torch.Tensor:
    """Keep the direction, remap the norm r (exp: expm1(r), square: r^2)."""
    if mode[0] == "linear":
        return xyz
    r = xyz.norm(dim=-1, keepdim=True)
    xyz = xyz / r.clip(min=1e-8)
    return xyz * (r.square() if mode[0] == "square" else torch.expm1(r))


def activate_conf(x: torch.Tensor, mode: Mode) -> torch.Tensor:
    kind, vmin, vmax = mode
    if kind == "sigmoid":
        return (vmax - vmin) * torch.sigmoid(x) + vmin
    e = x.exp()
    return vmin + (e.clip(max=vmax - vmin) if math.isfinite(vmax - vmin) else e)


def _released() -> dict[str, CroCoConfig]:
    mast3r = CroCoConfig(head_type="catmlp+dpt", desc_dim=24, two_confs=True, desc_conf_mode=("exp", 0.0, INF),
                         arch="AsymmetricMASt3R")
    return {
        "DUSt3R_ViTLarge_BaseDecoder_512_dpt": CroCoConfig(head_type="dpt"),
        "DUSt3R_ViTLarge_BaseDecoder_512_linear": CroCoConfig(head_type="linear"),
        "DUSt3R_ViTLarge_BaseDecoder_224_linear": CroCoConfig(head_type="linear", img_size=(224, 224)),
        "MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric": mast3r,
    }


RELEASED = _released()


# ---------------------------------------------------------------------------------------------- network
class PatchEmbed(nn.Module):
    """Plain 16x16 patch embedding (the training-time ManyAR variant has the same weights)."""

    def __init__(self, dim: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, dim, patch_size, stride=patch_size)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.proj(img).flatten(2).transpose(1, 2)  # row-major tokens


def _make_head(cfg: CroCoConfig) -> nn.Module:
    dims = (cfg.enc_embed_dim, cfg.dec_embed_dim, cfg.dec_depth)
    dpt_kw = dict(feature_dim=cfg.dpt_feature_dim, last_dim=cfg.dpt_last_dim, layer_dims=cfg.dpt_layer_dims)
    if cfg.head_type == "linear":
        return LinearHead(cfg.dec_embed_dim, 4, cfg.patch_size)
    if cfg.head_type == "dpt":
        return DPTHead(*dims, 4, patch_size=cfg.patch_size, **dpt_kw)
    return CatMlpDPTHead(*dims, desc_dim=cfg.desc_dim, two_confs=cfg.two_confs,
                         hidden_dim_factor=cfg.local_mlp_hidden_factor, patch_size=cfg.patch_size, **dpt_kw)


class AsymmetricCroCo3DStereo(nn.Module):
    """DUSt3R / MASt3R network. Registration order reproduces the release state_dict order."""

    def __init__(self, cfg: CroCoConfig = CroCoConfig()):
        super().__init__()
        self.cfg = cfg
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.dec_embed_dim))  # CroCo pre-training leftover, unused
        self.patch_embed = PatchEmbed(cfg.enc_embed_dim, cfg.patch_size)
        self.enc_blocks = nn.ModuleList(
            EncoderBlock(cfg.enc_embed_dim, cfg.enc_num_heads, cfg.mlp_ratio) for _ in range(cfg.enc_depth))
        self.enc_norm = layer_norm(cfg.enc_embed_dim)
        self.decoder_embed = nn.Linear(cfg.enc_embed_dim, cfg.dec_embed_dim)
        self.dec_blocks = nn.ModuleList(
            DecoderBlock(cfg.dec_embed_dim, cfg.dec_num_heads, cfg.mlp_ratio) for _ in range(cfg.dec_depth))
        self.dec_norm = layer_norm(cfg.dec_embed_dim)
        self.dec_blocks2 = nn.ModuleList(
            DecoderBlock(cfg.dec_embed_dim, cfg.dec_num_heads, cfg.mlp_ratio) for _ in range(cfg.dec_depth))
        self.downstream_head1 = _make_head(cfg)
        self.downstream_head2 = _make_head(cfg)

    def _rope(self, pos: torch.Tensor, dim: int, heads: int, dtype: torch.dtype):
        return rope_tables(pos, dim // heads, self.cfg.rope_base, dtype)

    def encode(self, imgs: torch.Tensor, true_shape: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode a batch of same-size images (B, 3, H, W) in [-1, 1].

        Returns tokens after ``enc_norm`` (B, N, enc_dim) and their (row, col) positions (B, N, 2), row-major.
        ``true_shape`` (B, 2) = (H, W) per image is accepted for API parity; the inference patch embedding
        never transposes, so it must equal the tensor size.
        """
        b, _, h, w = imgs.shape
        p = self.cfg.patch_size
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
        if true_shape is not None and not bool((torch.as_tensor(true_shape).cpu() == torch.tensor([h, w])).all()):
            raise ValueError(f"true_shape {torch.as_tensor(true_shape).tolist()} differs from the image tensor size "
                             f"{h}x{w}; batch images of the same size only (no padding or transposition)")
        x = self.patch_embed(imgs)
        pos = grid_positions(h // p, w // p, imgs.device)
        rope = self._rope(pos, self.cfg.enc_embed_dim, self.cfg.enc_num_heads, x.dtype)
        for blk in self.enc_blocks:
            x = blk(x, rope)
        return self.enc_norm(x), pos.expand(b, -1, -1)

    def decode(self, feat1: torch.Tensor, pos1: torch.Tensor, feat2: torch.Tensor, pos2: torch.Tensor
               ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Both decoders side by side. Returns each side's token list [encoder tokens, block 1 .. block L (normed)]."""
        dim, heads = self.cfg.dec_embed_dim, self.cfg.dec_num_heads
        x1, x2 = self.decoder_embed(feat1), self.decoder_embed(feat2)
        r1, r2 = self._rope(pos1, dim, heads, x1.dtype), self._rope(pos2, dim, heads, x2.dtype)
        out1, out2 = [feat1], [feat2]
        for blk1, blk2 in zip(self.dec_blocks, self.dec_blocks2):
            # simultaneous update: each side attends to the other side's *previous* output
            x1, x2 = blk1(x1, x2, r1, r2), blk2(x2, x1, r2, r1)
            out1.append(x1)
            out2.append(x2)
        out1[-1], out2[-1] = self.dec_norm(out1[-1]), self.dec_norm(out2[-1])
        return out1, out2

    def head(self, side: int, tokens: Sequence[torch.Tensor], hw: tuple[int, int]) -> torch.Tensor:
        """Raw head output (B, C, H, W). Runs in the head's parameter dtype with autocast off, like the
        official forward (which casts tokens to float32 so heads never run in half precision)."""
        head = self.downstream_head1 if side == 1 else self.downstream_head2
        dtype = head.dpt.head[0].weight.dtype if hasattr(head, "dpt") else head.proj.weight.dtype
        with torch.autocast(tokens[0].device.type, enabled=False):
            return head([t.to(dtype) for t in tokens], hw)

    def postprocess(self, raw: torch.Tensor, side: int) -> dict[str, torch.Tensor]:
        """Channels-last activations of a raw head map (autocast off, like the heads)."""
        with torch.autocast(raw.device.type, enabled=False):
            return self._activate(raw.permute(0, 2, 3, 1), side)

    def _activate(self, x: torch.Tensor, side: int) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        conf = activate_conf(x[..., 3], cfg.conf_mode)
        out = {"pts3d" if side == 1 else "pts3d_in_other_view": activate_points(x[..., :3], cfg.depth_mode),
               "conf": conf}
        if cfg.desc_dim:
            desc = x[..., 4:4 + cfg.desc_dim]
            out["desc"] = desc / desc.norm(dim=-1, keepdim=True)  # no epsilon, as released
            out["desc_conf"] = (activate_conf(x[..., 4 + cfg.desc_dim], cfg.desc_conf_mode)
                                if cfg.two_confs and cfg.desc_conf_mode is not None else conf.clone())
        return out

    def predict(self, feat1: torch.Tensor, pos1: torch.Tensor, hw1: tuple[int, int],
                feat2: torch.Tensor, pos2: torch.Tensor, hw2: tuple[int, int]
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Pair prediction from cached encoder outputs (lets a caller encode every image once for many pairs)."""
        toks1, toks2 = self.decode(feat1, pos1, feat2, pos2)
        return (self.postprocess(self.head(1, toks1, hw1), 1),
                self.postprocess(self.head(2, toks2, hw2), 2))

    def forward(self, view1_img: torch.Tensor, view2_img: torch.Tensor
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(pred1, pred2) for pairs (view1_img[b], view2_img[b]); pred1 = {pts3d, conf}, pred2 =
        {pts3d_in_other_view, conf} (+ desc, desc_conf for MASt3R), channels last."""
        hw1, hw2 = tuple(view1_img.shape[-2:]), tuple(view2_img.shape[-2:])
        if hw1 == hw2:  # one encoder pass for both views
            feat, pos = self.encode(torch.cat((view1_img, view2_img)))
            (f1, f2), (p1, p2) = feat.chunk(2), pos.chunk(2)
        else:
            (f1, p1), (f2, p2) = self.encode(view1_img), self.encode(view2_img)
        return self.predict(f1, p1, hw1, f2, p2, hw2)

    def forward_pairs(self, imgs: torch.Tensor, pairs: torch.Tensor
                      ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Pairs (i, j) of indices into a batch of same-size images; every image is encoded once, however
        many pairs it is in (a symmetrized graph costs one encoder pass per image, not two per pair)."""
        feat, pos = self.encode(imgs)
        pairs = torch.as_tensor(pairs, device=feat.device)
        i, j = pairs[:, 0], pairs[:, 1]
        hw = tuple(imgs.shape[-2:])
        return self.predict(feat[i], pos[i], hw, feat[j], pos[j], hw)


AsymmetricMASt3R = AsymmetricCroCo3DStereo  # same network; the config's head_type selects the MASt3R head
