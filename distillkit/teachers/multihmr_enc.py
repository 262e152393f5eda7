"""Multi-HMR's image encoder (DINOv2 ViT-L/14, no registers) as a teacher: patch tokens after the final norm.

This is the DUNE ``multihmr_vitlarge_14_672`` teacher. The network is timm's ``vit_large_patch14_dinov2``; the
weights come from a Multi-HMR checkpoint (``multiHMR_672_L.pt``, …): the state dict under ``'model_state_dict'``
with the encoder under ``backbone.encoder.`` (or ``encoder.backbone.``, the "anny" variant) in the official DINOv2
layout (see ``multihmr.py`` for the mapping). Every other key (the human-mesh heads) is ignored; every encoder key
must be present. ``pos_embed`` (trained for 518 px) is resampled once to the teacher input, as for DINOv2.

ImageNet normalisation. The CLS token is dropped, as in DUNE: the teacher returns ``cls=None`` and the store's
``cls`` array holds the mean of the patch tokens, marked in the provenance ``output`` (``has_cls`` False).
"""

from __future__ import annotations

import argparse
import io
import logging

import torch

from distillkit_schemas import TeacherProvenance

from distillkit.images import IMAGENET_MEAN, IMAGENET_STD
from distillkit.teachers import multihmr
from distillkit.teachers.base import PATCH_ONLY_OUTPUT, RESIZE, Teacher, TeacherOutput, random_init_digest
from distillkit.teachers.checkpoints import fetch_checkpoint, read_state_dict, sha256

log = logging.getLogger("distillkit")

NAME = "multihmr_vitl14_enc"
PATCH_SIZE = 14


def read_multihmr(data: bytes, ref: str) -> dict:
    """A Multi-HMR checkpoint as a dict: the `.pt` pickle (tensors, containers and argparse.Namespace only; no code
    runs) or a flat safetensors state dict."""
    if data[8:9] == b"{" and not data.startswith(b"PK"):
        return read_state_dict(data, ref)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"checkpoint {ref}: not a readable torch checkpoint ({type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"checkpoint {ref}: expected a dict (with 'model_state_dict'), got {type(obj).__name__}")
    return obj


class MultiHMREncoderTeacher(Teacher):
    def __init__(self, name: str, input_hw: tuple[int, int], checkpoint: str | None, seed: int,
                 overrides: dict, dtype: str, device: torch.device, storage_options: dict | None = None):
        if "patch_size" in overrides:
            raise ValueError(f"{name}: patch_size cannot be overridden (the teacher grid is computed with "
                             f"{PATCH_SIZE})")
        self.device = device
        torch.manual_seed(seed)
        model = multihmr.create_encoder(img_size=input_hw, **overrides)
        if checkpoint:
            data = fetch_checkpoint(checkpoint, storage_options)
            digest = sha256(data)
            multihmr.load_encoder(model, read_multihmr(data, checkpoint), checkpoint)
            log.info("teacher %s: loaded the encoder of %s (sha256 %s…)", name, checkpoint, digest[:12])
        else:
            digest = random_init_digest(name, seed)
        self.module = model.eval().requires_grad_(False).to(device)
        self.provenance = TeacherProvenance(
            name=name, family="multihmr", arch=multihmr.TIMM_ARCH, arch_overrides=dict(overrides),
            checkpoint=checkpoint or digest, checkpoint_sha256=digest, input_hw=input_hw, patch_size=PATCH_SIZE,
            grid_hw=(input_hw[0] // PATCH_SIZE, input_hw[1] // PATCH_SIZE), embed_dim=model.embed_dim,
            num_registers=0, mean=IMAGENET_MEAN, std=IMAGENET_STD,
            output="patch tokens after the final norm (CLS token dropped); " + PATCH_ONLY_OUTPUT,
            dtype=dtype, resize=RESIZE,
        )

    def forward(self, x: torch.Tensor) -> TeacherOutput:
        feats = self.module.forward_features(x)
        gh, gw = self.provenance.grid_hw
        patch = feats[:, self.module.num_prefix_tokens:].reshape(x.shape[0], gh, gw, -1)
        return TeacherOutput(cls=None, patch=patch)
