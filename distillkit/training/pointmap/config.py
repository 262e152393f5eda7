"""Configuration of the pointmap task (seed 000): training one scene-specific student, a job over a scene store,
ablations (pydantic). The student's own config and presets live with the networks (`distillkit.students.pointmap`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from distillkit.config.common import Strict, parse_hw
from distillkit.config.training import RunFields
from distillkit.students.pointmap.config import STUDENT_PRESETS, PointmapStudentConfig  # noqa: F401  (re-exported)

TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    # the paper's best model: ViT, 200 epochs, 256 latent, 6 blocks, 4 heads; targets x100 as in the paper
    "paper_vit_best": {"student": {"preset": "paper_vit"}, "epochs": 200, "target_scale": 100.0},
}


class PointmapTrainConfig(RunFields):
    """Parameters of `train_pointmap_student` (one scene, one student). The fields every task shares (out_dir,
    max_steps, resume, init_from, grad_clip, color_jitter, seed, device) are `RunFields`'."""

    preset: Literal["paper_vit_best"] | None = Field(default=None, description="training preset (fields given "
                                                     "explicitly win)")
    student: PointmapStudentConfig = Field(default_factory=PointmapStudentConfig)
    image_size: tuple[int, int] | None = Field(default=None, description="training/eval resolution (H, W); None = "
                                               "the data's. Targets are resized by nearest sampling, K exactly")
    epochs: float = Field(default=30.0, gt=0, description="passes over the training frames (pixel sampler: "
                          "pixels_per_step * steps = epochs * train pixels)")
    max_minutes: float | None = Field(default=None, gt=0, description="training-time budget in minutes (stops "
                                      "early; the lr schedule follows the larger of step and time progress)")
    batch_size: int = Field(default=8, ge=1, description="frames per step (image sampler)")
    lr: float = Field(default=1e-3, gt=0)
    min_lr: float = Field(default=1e-5, ge=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    warmup_fraction: float = Field(default=0.05, ge=0, le=1)
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
    eval_every: float = Field(default=0.0, ge=0, description="evaluate every N epochs (0 = at the end only; the DUNE "
                              "task's eval_every counts optimiser steps)")
    eval_every_s: float = Field(default=0.0, ge=0, description="also evaluate every N seconds of training time "
                                "(held-out L2 only; for samplers compared per minute)")
    eval_pose: bool = Field(default=True, description="PnP-RANSAC pose metrics (needs reference poses)")
    pnp_reproj_px: float | None = Field(default=None, gt=0, description="None = 10 px at 480 px height, scaled")
    pnp_iterations: int = Field(default=1000, ge=1)
    metres_per_unit: float = Field(default=1.0, gt=0, description="world units -> metres for pose thresholds")
    # run
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
