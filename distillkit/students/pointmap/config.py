"""The pointmap student's config (pydantic, no torch) and its presets."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from distillkit.config.common import Strict
from distillkit.students.pointmap import FAMILIES

# Student presets. "paper_*" follow the paper (Dutt, Lunawat, Kaur: DUSt3R -> small students on 12-Scenes).
STUDENT_PRESETS: dict[str, dict[str, Any]] = {
    # ~46 MB: 3 -> 512 channels in eight 3x3 convs (stride 8), per-pixel FC head 512-512-3 (paper: 45 MB)
    "paper_cnn": {"kind": "cnn", "cnn_widths": [64, 128, 256, 512, 512, 512, 512, 512],
                  "cnn_strides": [2, 2, 2, 1, 1, 1, 1, 1], "head_widths": [512, 512]},
    # a CPU-sized vanilla CNN (same design, narrower)
    "small_cnn": {"kind": "cnn", "cnn_widths": [32, 64, 128, 128, 256, 256], "cnn_strides": [2, 2, 2, 1, 1, 1],
                  "head_widths": [256, 256]},
    # MobileNetV3-Small features (3.7 MB, as in the paper) + per-pixel head
    "paper_mobilenet": {"kind": "mobilenet", "mobilenet_variant": "mobilenetv3_small_100", "head_widths": [256, 256]},
    # the paper's best ViT: 256 latent, 6 encoder + 6 decoder blocks, 4 heads (patch: not stated; 32 here)
    "paper_vit": {"kind": "vit", "patch_size": 32, "blocks": 6, "heads": 4, "latent": 256},
}


class PointmapStudentConfig(Strict):
    """One of the student families; all output a dense [B, 3, H, W] world pointmap at the input resolution, as
    `centre + scale * offset` (centre/scale = mean/RMS spread of the scene's training targets, stored in the model)."""

    preset: Literal[(*STUDENT_PRESETS, "custom")] = "custom"
    kind: Literal[tuple(FAMILIES)] = "cnn"
    # vanilla CNN
    cnn_widths: list[int] = Field(default_factory=lambda: [32, 64, 128, 128, 256, 256],
                                  description="3x3 conv widths (3 -> ... -> last); each conv + BN + ReLU")
    cnn_strides: list[int] = Field(default_factory=lambda: [2, 2, 2, 1, 1, 1], description="stride of each conv")
    head_widths: list[int] = Field(default_factory=lambda: [256, 256],
                                   description="per-pixel fully connected (1x1 conv) head of cnn/mobilenet: "
                                               "hidden widths, then 3 outputs")
    # MobileNetV3 (timm)
    mobilenet_variant: str = Field(default="mobilenetv3_small_100", description="timm name (features_only)")
    pretrained: str | None = Field(default=None, description="backbone weights: local path or URL (timm "
                                   "state dict, .pth/.safetensors); None = random init (no downloads here)")
    freeze_backbone: bool = Field(default=False, description="frozen (BN statistics too) vs fine-tuned backbone "
                                  "(mobilenet; cnn: its conv encoder, useful with init_from: head-only training)")
    # ViT encoder-decoder
    patch_size: int = Field(default=32, ge=2, description="paper ablation: 16 / 32 / 64")
    blocks: int = Field(default=6, ge=1, description="encoder blocks = decoder blocks (paper: 4 / 6 / 8)")
    heads: int = Field(default=4, ge=1, description="attention heads (paper: 4 / 8)")
    latent: int = Field(default=256, ge=8, description="latent width (paper: 64 / 128 / 256)")
    mlp_ratio: float = Field(default=4.0, gt=0)
    dropout: float = Field(default=0.1, ge=0, lt=1)
    vit_head_width: int | None = Field(default=None, description="conv head width (None = latent)")

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset", "custom") != "custom":
            return {**STUDENT_PRESETS[data["preset"]], **data}  # explicit fields win over the preset
        return data

    @model_validator(mode="after")
    def _check(self) -> "PointmapStudentConfig":
        if len(self.cnn_widths) != len(self.cnn_strides):
            raise ValueError(f"cnn_widths ({len(self.cnn_widths)}) and cnn_strides ({len(self.cnn_strides)}) differ")
        if self.kind == "vit" and self.latent % self.heads:
            raise ValueError(f"latent {self.latent} must be a multiple of heads {self.heads}")
        return self

    def relevant(self) -> dict:
        """The fields that matter for this kind (dedupes ablation grids; labels runs)."""
        return {"kind": self.kind, **{k: getattr(self, k) for k in FAMILIES[self.kind]}}
