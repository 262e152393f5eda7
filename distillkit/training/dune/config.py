"""Parameters of the DUNE task (`distillkit train`, `train-student`, `retrain-student`): groups, training, and the
student (its config lives with the network, `distillkit.students.dune`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from distillkit.config.common import Strict
from distillkit.config.training import RunFields
from distillkit.students.dune import StudentConfig


class GroupConfig(Strict):
    """A domain group for teacher-balanced batches (DUNE Tab. 5): its stores and the teacher it belongs to."""

    name: str
    stores: list[str] = Field(min_length=1)
    teacher: str = Field(description="the group's own teacher (data sharing 'none'/'generic' train only it)")


class TrainConfig(RunFields):
    """Parameters of `distillkit train` and the `train-student` flow (DUNE-style students from feature stores;
    ``task: pointmap`` selects `distillkit.training.pointmap.config.PointmapJobConfig` instead). The fields every
    task shares (out_dir, max_steps, resume, init_from, grad_clip, color_jitter, seed, device) are `RunFields`'."""

    task: Literal["dune"] = Field(default="dune", description="dune: multi-teacher feature distillation; "
                                  "pointmap: scene-specific pointmap students (PointmapJobConfig)")
    stores: list[str] = Field(default_factory=list, description="teacher stores to stream (zipped by sample id)")
    teachers: list[str] | None = Field(default=None, description="subset of teachers; None = all in the stores")
    student: StudentConfig = Field(default_factory=StudentConfig)
    projector: Literal["tp", "sp", "mlp", "lp"] = Field(
        default="tp", description="tp transformer projector | sp (= mlp) 2-layer MLP | lp ladder on every block")
    teacher_drop: Literal["none", "lowest_loss"] = Field(
        default="none", description="lowest_loss: per image keep the worst-fit teacher, drop each other with p")
    teacher_drop_p: float = Field(default=0.5, ge=0.0, le=1.0)
    decode: Literal["full", "coeffs"] = Field(
        default="full", description="PCA-stored targets: full = back to the teacher width; coeffs = the K "
                                    "coefficients (projectors predict them, the loss is computed there)")
    decode_on: Literal["device", "cpu"] = Field(
        default="device", description="compact targets are decoded on the training device (the loader moves only "
                                      "the compact bytes) or in the loader workers")
    verify_checksums: bool = Field(default=True, description="verify every shard's crc32c while reading "
                                                             "(a damaged shard stops training with its name)")
    normalization: Literal["standard", "phi-s"] = Field(
        default="standard", description="teacher targets: per-channel standardisation (store stats) or PHI-S")
    groups: list[GroupConfig] | None = Field(
        default=None, description="teacher-balanced batches: one entry per domain group (stores + own teacher)")
    data_sharing: Literal["full", "generic", "none"] = Field(
        default="full", description="which teachers train on a group's images: all | own (+all for the generic group) "
                                    "| own only")
    generic_group: str | None = Field(default=None, description="group whose images train every teacher (generic)")
    batch_size: int = Field(default=32, ge=1)
    epochs: float = Field(default=1.0, gt=0, description="passes over the training split (fractions allowed)")
    lr: float = Field(default=3e-4, gt=0, description="peak learning rate (DUNE: 3e-4 x batch/256)")
    min_lr: float = Field(default=1e-6, ge=0)
    weight_decay: float = 0.03
    warmup_fraction: float = Field(default=0.1, ge=0, le=1)
    shuffle_shards: int = Field(default=2, ge=1, description="shards mixed in one shuffle block")
    num_workers: int = Field(default=2, ge=0, description="DataLoader workers for the streaming reader")
    eval_every: int = Field(default=0, ge=0, description="evaluate every N optimiser steps (0 = at the end only; "
                            "the pointmap task's eval_every counts epochs)")
    ckpt_every: int = Field(default=50, ge=1, description="checkpoint every N steps (and at the end)")
    max_eval_samples: int = Field(default=256, ge=1)
    log_batches: bool = Field(default=False, description="write out_dir/batches/rank<r>.jsonl (sample ids per step)")
    storage_options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("stores", mode="before")
    @classmethod
    def _stores(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _data(self) -> "TrainConfig":
        if not self.stores and not self.groups:
            raise ValueError("give `stores` (zipped by sample id) or `groups` (teacher-balanced batches)")
        if self.stores and self.groups:
            raise ValueError("give either `stores` or `groups`, not both")
        if self.groups:
            names = [g.name for g in self.groups]
            if len(set(names)) != len(names):
                raise ValueError(f"group names must be unique, got {names}")
            if self.generic_group is not None and self.generic_group not in names:
                raise ValueError(f"generic_group {self.generic_group!r} is not one of the groups {names}")
            if self.batch_size < len(self.groups):
                raise ValueError(f"batch_size {self.batch_size} < {len(self.groups)} groups")
        return self

    def all_stores(self) -> list[str]:
        return list(self.stores) + [s for g in (self.groups or []) for s in g.stores]
