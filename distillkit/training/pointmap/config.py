"""Configuration of scene-specific pointmap students (seed 000) and their ablations (pydantic)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from distillkit.config.common import Strict, parse_hw


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

TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    # the paper's best model: ViT, 200 epochs, 256 latent, 6 blocks, 4 heads; targets x100 as in the paper
    "paper_vit_best": {"student": {"preset": "paper_vit"}, "epochs": 200, "target_scale": 100.0},
}


class PointmapStudentConfig(Strict):
    """One of three students; all output a dense [B, 3, H, W] world pointmap at the input resolution, as
    `centre + scale * offset` (centre/scale = mean/RMS spread of the scene's training targets, stored in the model)."""

    preset: Literal["paper_cnn", "small_cnn", "paper_mobilenet", "paper_vit", "custom"] = "custom"
    kind: Literal["cnn", "mobilenet", "vit"] = "cnn"
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
        keys = {"cnn": ("cnn_widths", "cnn_strides", "head_widths", "freeze_backbone"),
                "mobilenet": ("mobilenet_variant", "pretrained", "freeze_backbone", "head_widths"),
                "vit": ("patch_size", "blocks", "heads", "latent", "mlp_ratio", "dropout", "vit_head_width")}[self.kind]
        return {"kind": self.kind, **{k: getattr(self, k) for k in keys}}


class PointmapTrainConfig(Strict):
    """Parameters of `train_pointmap_student` (one scene, one student)."""

    preset: Literal["paper_vit_best"] | None = Field(default=None, description="training preset (fields given "
                                                     "explicitly win)")
    out_dir: str = Field(description="checkpoint-last.pt, metrics.json, loss_curve.png")
    student: PointmapStudentConfig = Field(default_factory=PointmapStudentConfig)
    image_size: tuple[int, int] | None = Field(default=None, description="training/eval resolution (H, W); None = "
                                               "the data's. Targets are resized by nearest sampling, K exactly")
    epochs: float = Field(default=30.0, gt=0, description="passes over the training frames (pixel sampler: "
                          "pixels_per_step * steps = epochs * train pixels)")
    max_steps: int | None = Field(default=None, ge=1, description="stop after this many steps (overrides epochs)")
    max_minutes: float | None = Field(default=None, gt=0, description="training-time budget in minutes (stops "
                                      "early; the lr schedule follows the larger of step and time progress)")
    init_from: str | None = Field(default=None, description="start from this pointmap checkpoint's weights (tensors "
                                  "whose names and shapes match; e.g. head-only training on a trained encoder)")
    batch_size: int = Field(default=8, ge=1, description="frames per step (image sampler)")
    lr: float = Field(default=1e-3, gt=0)
    min_lr: float = Field(default=1e-5, ge=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    warmup_fraction: float = Field(default=0.05, ge=0, le=1)
    grad_clip: float = Field(default=1.0, ge=0, description="0 disables")
    # loss
    loss: Literal["mse", "l2"] = Field(default="mse", description="mse: squared error per coordinate (the paper); "
                                       "l2: Euclidean distance (DUSt3R's regression loss, less dominated by outliers)")
    conf_weight: bool = Field(default=False, description="weight each pixel by its teacher confidence")
    min_conf: float = Field(default=0.0, ge=0, description="ignore pixels with confidence below this")
    target_scale: float = Field(default=1.0, gt=0, description="loss on targets x this (paper: ViT on x100); "
                                "reported losses are in these units, metrics always in world units")
    # augmentation (applied identically to image, pointmap, confidence, mask; K transformed)
    crop_scale: tuple[float, float] = Field(default=(1.0, 1.0), description="area fraction of the random crop "
                                            "(resized back to image_size); (1, 1) = no crop")
    flip_p: float = Field(default=0.0, ge=0, le=1, description="horizontal flip probability (a mirror image: K "
                          "gets a negative fx; off by default, a scene-specific model never sees mirrored views)")
    color_jitter: float = Field(default=0.0, ge=0, le=1, description="brightness/contrast jitter (image only)")
    # sampler
    sampler: Literal["image", "pixel"] = Field(default="image", description="image: whole-frame batches; pixel: "
                                               "random pixels across many frames (cnn/mobilenet: per-pixel head)")
    pixels_per_step: int = Field(default=4096, ge=1, description="samples per step (pixel sampler)")
    pixel_taps: Literal["cell", "bilinear"] = Field(
        default="cell", description="cell: a feature cell vs the target at its centre pixel (one head evaluation, "
        "as ACE); bilinear: any pixel, head on its 4 bilinear taps (exactly the dense prediction; 4x the cost)")
    frames_per_step: int = Field(default=16, ge=1, description="frames whose feature maps a pixel batch is drawn "
                                 "from (pixel sampler, trainable encoder)")
    buffer_views: int = Field(default=1, ge=1, description="pixel sampler with a frozen encoder: augmented views "
                              "per training frame in the precomputed feature buffer (ACE-style)")
    # evaluation
    eval_every: float = Field(default=0.0, ge=0, description="evaluate every N epochs (0 = at the end only)")
    eval_every_s: float = Field(default=0.0, ge=0, description="also evaluate every N seconds of training time "
                                "(held-out L2 only; for samplers compared per minute)")
    eval_pose: bool = Field(default=True, description="PnP-RANSAC pose metrics (needs reference poses)")
    pnp_reproj_px: float | None = Field(default=None, gt=0, description="None = 10 px at 480 px height, scaled")
    pnp_iterations: int = Field(default=1000, ge=1)
    metres_per_unit: float = Field(default=1.0, gt=0, description="world units -> metres for pose thresholds")
    # run
    seed: int = 0
    device: str = "auto"
    resume: bool = Field(default=True, description="continue from out_dir/checkpoint-last.pt if present")
    ckpt_every: int = Field(default=200, ge=1, description="checkpoint every N steps (and at the end)")

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset"):
            base = TRAIN_PRESETS[data["preset"]]
            merged = {**base, **data}
            if isinstance(base.get("student"), dict) and isinstance(data.get("student"), dict):
                merged["student"] = {**base["student"], **data["student"]}
            return merged
        return data

    @field_validator("image_size", mode="before")
    @classmethod
    def _hw(cls, v: Any) -> tuple[int, int] | None:
        return None if v is None else parse_hw(v)

    @model_validator(mode="after")
    def _check(self) -> "PointmapTrainConfig":
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}")
        if self.sampler == "pixel" and self.student.kind == "vit":
            raise ValueError("the pixel sampler needs a per-pixel head (cnn or mobilenet); the ViT's conv head "
                             "mixes neighbouring pixels")
        if self.image_size and self.student.kind == "vit":
            p = self.student.patch_size
            if self.image_size[0] % p or self.image_size[1] % p:
                raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size {p}")
        return self


class AblationConfig(Strict):
    """Parameters of the `ablate-students` flow: a grid of runs over the same scenes."""

    out_dir: str = Field(description="runs go to <out_dir>/<run>/<scene>/; ablation.csv and ablation.png here")
    scenes: list[dict[str, Any]] = Field(min_length=1, description="scene references (see distillkit.scenes.refs.load_scene): "
                                         "{npz: path} | {store: url, scene: name} | {synthetic: {...}}")
    base: dict[str, Any] = Field(default_factory=dict, description="PointmapTrainConfig fields shared by all runs "
                                 "(out_dir is set per run)")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="cartesian grid, dotted keys, e.g. "
                                       "{'student.kind': ['cnn', 'vit'], 'epochs': [50, 200]}")
    runs: list[dict[str, Any]] = Field(default_factory=list, description="explicit runs (dotted keys) added after "
                                       "the grid, e.g. ViT-only hyperparameters")

    @model_validator(mode="after")
    def _check(self) -> "AblationConfig":
        if not self.grid and not self.runs:
            raise ValueError("give a `grid` and/or `runs`")
        return self


class PointmapJobConfig(PointmapTrainConfig):
    """`distillkit train --task pointmap` and the `train-student` flow with ``task: pointmap``: one scene-specific
    student per scene of a DUSt3R scene store, each into ``<out_dir>/<scene>/``."""

    task: Literal["pointmap"] = "pointmap"
    store: str = Field(description="DUSt3R scene store (`distillkit cache-scenes`): local path or fsspec URL")
    scenes: list[str] | None = Field(default=None, description="scenes to train on (default: every aligned scene)")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options for the store")
    out_dir: str = Field(description="a folder per scene (checkpoint, metrics, loss curve) and summary.json/.csv")

    def scene_config(self, scene: str) -> PointmapTrainConfig:
        """The single-scene training config of one scene."""
        fields = self.model_dump(exclude={"task", "store", "scenes", "storage_options", "preset"})
        return PointmapTrainConfig.model_validate({**fields, "out_dir": f"{self.out_dir.rstrip('/')}/{scene}"})
