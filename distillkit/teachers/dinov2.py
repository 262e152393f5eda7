"""DINOv2 ViT-S/B/L/g-14, with and without 4 registers, through timm.

Loads the official `.pth` files (keys as in facebookresearch/dinov2), timm-format safetensors/pth (hub
`timm/vit_*_dinov2*`) and Hugging Face transformers-format safetensors (`facebook/dinov2-*`). The cached output is the
CLS token and the patch tokens after the final norm; register tokens are not cached.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import timm
import torch
from timm.models.vision_transformer import checkpoint_filter_fn

from distillkit_schemas import TeacherProvenance

from distillkit.images import IMAGENET_MEAN, IMAGENET_STD
from distillkit.teachers.base import Teacher, TeacherOutput, random_init_digest
from distillkit.teachers.checkpoints import check_keys, fetch_checkpoint, read_state_dict, sha256, strip_prefixes

log = logging.getLogger("distillkit")


@dataclass(frozen=True)
class DinoSpec:
    arch: str
    embed_dim: int
    num_registers: int
    patch_size: int = 14


def _specs() -> dict[str, DinoSpec]:
    sizes = {"s": ("small", 384), "b": ("base", 768), "l": ("large", 1024), "g": ("giant", 1536)}
    out = {}
    for letter, (size, dim) in sizes.items():
        out[f"dinov2_vit{letter}14"] = DinoSpec(f"vit_{size}_patch14_dinov2", dim, 0)
        out[f"dinov2_vit{letter}14_reg"] = DinoSpec(f"vit_{size}_patch14_reg4_dinov2", dim, 4)
    return out


SPECS = _specs()


def _from_transformers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face transformers Dinov2Model keys -> official DINOv2 keys (then timm converts those)."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    simple = {
        "embeddings.cls_token": "cls_token", "embeddings.mask_token": "mask_token",
        "embeddings.position_embeddings": "pos_embed", "embeddings.register_tokens": "register_tokens",
        "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias",
    }
    for k, v in sd.items():
        if k in simple:
            out[simple[k]] = v
            continue
        m = re.match(r"encoder\.layer\.(\d+)\.(.+)", k)
        if not m:
            out[k] = v  # left for the strict key check to report
            continue
        i, rest = int(m.group(1)), m.group(2)
        a = re.match(r"attention\.attention\.(query|key|value)\.(weight|bias)", rest)
        if a:
            qkv.setdefault((i, a.group(2)), {})[a.group(1)] = v
            continue
        rest = (rest.replace("attention.output.dense", "attn.proj")
                .replace("layer_scale1.lambda1", "ls1.gamma").replace("layer_scale2.lambda1", "ls2.gamma")
                .replace("mlp.weights_in", "mlp.w12").replace("mlp.weights_out", "mlp.w3"))
        out[f"blocks.{i}.{rest}"] = v
    for (i, kind), parts in qkv.items():
        out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]], 0)
    if "mask_token" in out and out["mask_token"].ndim == 3:
        out["mask_token"] = out["mask_token"][0]
    return out


def load_weights(model: torch.nn.Module, sd: dict[str, torch.Tensor], ref: str) -> None:
    sd = strip_prefixes(sd, ("module.", "backbone.", "encoder."))
    if any(k.startswith("embeddings.") for k in sd):
        sd = _from_transformers(sd)
    sd = checkpoint_filter_fn(dict(sd), model)
    sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    try:
        result = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatches: a checkpoint of another size/variant
        detail = "; ".join(line.strip() for line in str(e).splitlines() if "size mismatch" in line)
        raise ValueError(f"checkpoint {ref} does not match the architecture: {detail or e}") from None
    missing = [k for k in result.missing_keys if not k.startswith("head.")]
    check_keys(missing, list(result.unexpected_keys), ref)


class DinoV2Teacher(Teacher):
    def __init__(self, name: str, input_hw: tuple[int, int], checkpoint: str | None, seed: int,
                 overrides: dict, dtype: str, device: torch.device, storage_options: dict | None = None):
        spec = SPECS[name]
        self.device = device
        kwargs = dict(overrides)
        torch.manual_seed(seed)
        model = timm.create_model(spec.arch, pretrained=False, img_size=input_hw, num_classes=0, **kwargs)
        if checkpoint:
            data = fetch_checkpoint(checkpoint, storage_options)
            digest = sha256(data)
            load_weights(model, read_state_dict(data, checkpoint), checkpoint)
            log.info("teacher %s: loaded %s (sha256 %s…)", name, checkpoint, digest[:12])
        else:
            digest = random_init_digest(name, seed)
        self.module = model.eval().requires_grad_(False).to(device)
        grid = (input_hw[0] // spec.patch_size, input_hw[1] // spec.patch_size)
        self.provenance = TeacherProvenance(
            name=name, family="dinov2", arch=spec.arch, arch_overrides=dict(overrides),
            checkpoint=checkpoint or digest, checkpoint_sha256=digest, input_hw=input_hw,
            patch_size=spec.patch_size, grid_hw=grid, embed_dim=model.embed_dim,
            num_registers=spec.num_registers if overrides.get("reg_tokens") is None else int(overrides["reg_tokens"]),
            mean=IMAGENET_MEAN, std=IMAGENET_STD, output="cls+patch tokens after the final norm (registers dropped)",
            dtype=dtype, resize="crop box from the source, bicubic antialiased resize to input_hw",
        )

    def forward(self, x: torch.Tensor) -> TeacherOutput:
        feats = self.module.forward_features(x)
        b = feats.shape[0]
        gh, gw = self.provenance.grid_hw
        patch = feats[:, self.module.num_prefix_tokens:].reshape(b, gh, gw, -1)
        return TeacherOutput(cls=feats[:, 0], patch=patch)
