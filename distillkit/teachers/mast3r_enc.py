"""MASt3R's image encoder (CroCo ViT-L/16 with 2-D RoPE) as a teacher: patch tokens after ``enc_norm``.

This is the DUNE ``mast3r_vitlarge_16`` teacher. Only the encoder of our own network
(``distillkit.teachers.croco``) is built; ``encode`` is the network's own method, so the cached tokens are exactly
what the full MASt3R model feeds its decoders.

Weights: the released ``.pth`` or the Hugging Face layout (``config.json`` + ``model.safetensors``, also
``hf-hub:naver/MASt3R_…``), read by the croco checkpoint reader (the architecture comes from the file). Decoder,
head and ``mask_token`` keys are ignored; every encoder key must be present with the right shape, anything else
is an error naming the keys.

Input normalisation: pixels/255, then (x - 0.5)/0.5, i.e. [-1, 1] — what MASt3R was trained with (DUSt3R's
``load_images``). DUNE feeds the teacher the student's ImageNet-normalised tensor y = (x - m)/s and re-normalises
inside its wrapper: ((y·s + m) - 0.5)/0.5 = (x - 0.5)/0.5. Both steps are per-channel affine maps, so the composition
is exactly our normalisation (DUNE's bicubic resize of the normalised tensor is linear and commutes with them; we
resize the uint8 pixels instead, like every other teacher here).

No CLS token: the teacher returns ``cls=None``; the store's ``cls`` array then holds the mean of the patch tokens
(as DUNE fakes it) and the provenance ``output`` says so (``TeacherProvenance.has_cls`` is False): the trainer
skips the CLS loss for this teacher.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath

import fsspec
import torch
from torch import nn

from distillkit_schemas import TeacherProvenance

from distillkit.teachers.base import PATCH_ONLY_OUTPUT, RESIZE, Teacher, TeacherOutput, random_init_digest
from distillkit.teachers.croco.blocks import EncoderBlock, layer_norm
from distillkit.teachers.croco.checkpoint import CONFIG_NAME, HUB_PREFIX, WEIGHTS_NAME, config_from_kwargs, read_checkpoint
from distillkit.teachers.croco.model import RELEASED, AsymmetricCroCo3DStereo, CroCoConfig, PatchEmbed

log = logging.getLogger("distillkit")

NAME = "mast3r_vitl16_enc"
RELEASE = "MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric"
PATCH_SIZE = 16
MEAN = STD = (0.5, 0.5, 0.5)
ARCH = "AsymmetricMASt3R.encoder"
ENCODER_PREFIXES = ("patch_embed.", "enc_blocks.", "enc_norm.")
# everything else the full network holds: ignored when loading the encoder
NON_ENCODER_PREFIXES = ("mask_token", "decoder_embed.", "dec_blocks.", "dec_blocks2.", "dec_norm.",
                        "downstream_head1.", "downstream_head2.")
# user-facing override name -> CroCoConfig field (same names as the timm teachers where they exist)
OVERRIDES = {"embed_dim": "enc_embed_dim", "depth": "enc_depth", "num_heads": "enc_num_heads",
             "mlp_ratio": "mlp_ratio", "rope_base": "rope_base"}


class CroCoEncoder(nn.Module):
    """The encoder half of ``AsymmetricCroCo3DStereo``: same parameter names, same ``encode``."""

    def __init__(self, cfg: CroCoConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg.enc_embed_dim, cfg.patch_size)
        self.enc_blocks = nn.ModuleList(
            EncoderBlock(cfg.enc_embed_dim, cfg.enc_num_heads, cfg.mlp_ratio) for _ in range(cfg.enc_depth))
        self.enc_norm = layer_norm(cfg.enc_embed_dim)

    _rope = AsymmetricCroCo3DStereo._rope
    encode = AsymmetricCroCo3DStereo.encode  # the network's own code path, not a copy


def encoder_config(overrides: dict) -> CroCoConfig:
    """The released MASt3R config with encoder overrides applied (for random init)."""
    bad = sorted(set(overrides) - set(OVERRIDES))
    if bad:
        raise ValueError(f"{NAME}: unknown override(s) {bad} (allowed: {', '.join(OVERRIDES)})")
    fields = {OVERRIDES[k]: (float(v) if OVERRIDES[k] in ("mlp_ratio", "rope_base") else int(v))
              for k, v in overrides.items()}
    cfg = CroCoConfig(**{**_encoder_fields(RELEASED[RELEASE]), **fields})
    dim, heads = cfg.enc_embed_dim, cfg.enc_num_heads
    if dim % heads or (dim // heads) % 4:
        raise ValueError(f"{NAME}: embed_dim {dim} / num_heads {heads} must give a head dim divisible by 4 (2-D RoPE)")
    return cfg


def _encoder_fields(cfg: CroCoConfig) -> dict:
    return {f: getattr(cfg, f) for f in ("enc_embed_dim", "enc_depth", "enc_num_heads", "patch_size", "mlp_ratio",
                                          "rope_base")}


def arch_overrides(cfg: CroCoConfig) -> dict:
    """Encoder settings that differ from the release, under the user-facing names."""
    ref = _encoder_fields(RELEASED[RELEASE])
    mine = _encoder_fields(cfg)
    return {k: mine[f] for k, f in OVERRIDES.items() if mine[f] != ref[f]}


def split_encoder(sd: dict[str, torch.Tensor], ref: str) -> dict[str, torch.Tensor]:
    """The encoder's tensors of a full-network state dict; decoder/head keys dropped, foreign keys refused."""
    foreign = [k for k in sd if not k.startswith(ENCODER_PREFIXES + NON_ENCODER_PREFIXES)]
    if foreign:
        shown = ", ".join(foreign[:10]) + (f" … (+{len(foreign) - 10} more)" if len(foreign) > 10 else "")
        raise ValueError(f"checkpoint {ref} does not match the MASt3R network: {len(foreign)} unexpected key(s): "
                         f"{shown}")
    return {k: v for k, v in sd.items() if k.startswith(ENCODER_PREFIXES)}


def load_encoder(model: CroCoEncoder, sd: dict[str, torch.Tensor], ref: str) -> None:
    """Strict: every encoder key present with its shape (missing keys are named), nothing unknown."""
    enc = split_encoder(sd, ref)
    expected = model.state_dict()
    missing = [k for k in expected if k not in enc]
    unexpected = [k for k in enc if k not in expected]
    mismatched = [f"{k} (checkpoint {tuple(enc[k].shape)}, model {tuple(v.shape)})"
                  for k, v in expected.items() if k in enc and enc[k].shape != v.shape]
    problems = (("missing encoder key(s)", missing), ("unexpected encoder key(s)", unexpected),
                ("shape mismatch(es)", mismatched))
    parts = [f"{len(keys)} {what}: {', '.join(keys[:10])}{' …' if len(keys) > 10 else ''}"
             for what, keys in problems if keys]
    if parts:
        raise ValueError(f"checkpoint {ref}: the MASt3R encoder cannot be loaded: " + "; ".join(parts))
    model.load_state_dict(enc, strict=True, assign=True)


def checkpoint_digest(ref: str, storage_options: dict | None = None) -> str:
    """sha256 of the checkpoint bytes: the .pth file, or config.json + model.safetensors of the HF layout."""
    if ref.startswith(HUB_PREFIX):
        from huggingface_hub import hf_hub_download

        repo = ref[len(HUB_PREFIX):]
        ref = posixpath.dirname(hf_hub_download(repo_id=repo, filename=WEIGHTS_NAME))
    fs, path = fsspec.core.url_to_fs(ref, **(storage_options or {}))
    path = path.rstrip("/")
    if fs.isdir(path):
        files = [posixpath.join(path, CONFIG_NAME), posixpath.join(path, WEIGHTS_NAME)]
    elif path.endswith(".safetensors"):
        files = [posixpath.join(posixpath.dirname(path), CONFIG_NAME), path]
    else:
        files = [path]
    h = hashlib.sha256()
    for f in files:
        with fs.open(f, "rb") as fh:
            while chunk := fh.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()


def load_checkpoint_encoder(ref: str, overrides: dict, storage_options: dict | None) -> CroCoEncoder:
    """Build the encoder a MASt3R checkpoint describes (overrides, if given, must agree) and load it strictly."""
    arch, kwargs, sd, _ = read_checkpoint(ref, storage_options)
    if arch != "AsymmetricMASt3R":
        raise ValueError(f"checkpoint {ref} holds a DUSt3R network ({arch}), not MASt3R (AsymmetricMASt3R); "
                         f"{NAME} caches the MASt3R encoder")
    cfg = config_from_kwargs(kwargs, arch)
    if cfg.patch_size != PATCH_SIZE:
        raise ValueError(f"checkpoint {ref}: patch size {cfg.patch_size}, {NAME} needs {PATCH_SIZE}")
    wanted = encoder_config(overrides)
    differ = {k: (getattr(cfg, f), getattr(wanted, f)) for k, f in OVERRIDES.items()
              if k in overrides and getattr(cfg, f) != getattr(wanted, f)}
    if differ:
        raise ValueError(f"checkpoint {ref} disagrees with the overrides: "
                         + ", ".join(f"{k}: checkpoint {a}, override {b}" for k, (a, b) in differ.items()))
    with torch.device("meta"):  # tensors come from the file: no random init of ~300 M parameters
        model = CroCoEncoder(cfg)
    load_encoder(model, sd, ref)
    return model


class MASt3REncoderTeacher(Teacher):
    def __init__(self, name: str, input_hw: tuple[int, int], checkpoint: str | None, seed: int,
                 overrides: dict, dtype: str, device: torch.device, storage_options: dict | None = None):
        self.device = device
        if checkpoint:
            model = load_checkpoint_encoder(checkpoint, overrides, storage_options)
            digest = checkpoint_digest(checkpoint, storage_options)
            log.info("teacher %s: loaded the encoder of %s (sha256 %s…)", name, checkpoint, digest[:12])
        else:
            torch.manual_seed(seed)
            model = CroCoEncoder(encoder_config(overrides))
            digest = random_init_digest(name, seed)
        cfg = model.cfg
        self.module = model.eval().requires_grad_(False).to(device)
        self.provenance = TeacherProvenance(
            name=name, family="mast3r", arch=ARCH, arch_overrides=arch_overrides(cfg),
            checkpoint=checkpoint or digest, checkpoint_sha256=digest, input_hw=input_hw, patch_size=PATCH_SIZE,
            grid_hw=(input_hw[0] // PATCH_SIZE, input_hw[1] // PATCH_SIZE), embed_dim=cfg.enc_embed_dim,
            num_registers=0, mean=MEAN, std=STD, output="patch tokens after enc_norm (2-D RoPE, no CLS token); "
            + PATCH_ONLY_OUTPUT, dtype=dtype, resize=RESIZE,
        )

    def forward(self, x: torch.Tensor) -> TeacherOutput:
        feats, _ = self.module.encode(x)
        gh, gw = self.provenance.grid_hw
        return TeacherOutput(cls=None, patch=feats.reshape(x.shape[0], gh, gw, -1))
