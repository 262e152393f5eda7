"""Parameters of `distillkit cache` and the `cache-teachers` flow: the teachers and the feature store."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from distillkit_schemas.storage import parse_storage

from distillkit.config.common import Strict, check_multiple, parse_hw


class TeacherConfig(Strict):
    name: str = Field(description="registry name, e.g. dinov2_vits14_reg (see `distillkit teachers`)")
    checkpoint: str | None = Field(
        default=None, description="local path, fsspec URL or hf-hub:<repo>; None = random init (loudly recorded)")
    seed: int = Field(default=0, description="seed of the random init when no checkpoint is given")
    overrides: dict[str, int | float | str | bool] = Field(
        default_factory=dict, description="architecture overrides, e.g. {depth: 2} for small test configs")
    dtype: Literal["float16", "float32"] = "float16"
    storage: str = Field(
        default="fp16", description="patch tokens stored as fp16 (the teacher dtype) | int8 (per-channel affine) | "
        "pca:K (top-K principal coefficients) | pca:K+int8; see README 'Storage at scale'")
    grid: Literal["student", "own"] = Field(
        default="student", description="student = tokens on the student's grid (input = grid x teacher patch); "
        "own = student input rounded to a multiple of the teacher patch (the teacher's own grid)")


    @field_validator("storage")
    @classmethod
    def _storage(cls, v: str) -> str:
        parse_storage(v)  # a clear error for a malformed option; K is checked against the width at load time
        return str(v).strip()


class CacheConfig(Strict):
    """Parameters of `distillkit cache` and the `cache-teachers` flow."""

    source: str = Field(description="folder, glob, fsspec URL of either, or a manifest file (.txt/.csv/.jsonl)")
    store: str = Field(description="output Zarr v3 store: local path or fsspec URL (s3://bucket/prefix)")
    teachers: list[TeacherConfig] = Field(min_length=1)
    student_patch: int = Field(default=14, ge=1, description="student patch size: targets land on its token grid")
    image_size: tuple[int, int] = Field(default=(224, 224), description="student input size (H, W)")
    shard_size: int = Field(default=64, ge=1, description="samples per shard (one storage object per shard)")
    batch_size: int = Field(default=32, ge=1, description="teacher forward batch size")
    num_workers: int = Field(default=4, ge=0, description="image decoding threads")
    device: str = Field(default="auto", description="auto | cpu | cuda | cuda:N")
    val_fraction: float = Field(default=0.05, ge=0.0, lt=1.0, description="held-out fraction (hash of sample id)")
    codec: Literal["none", "zstd", "lz4"] = Field(
        default="none", description="compressor for feature arrays (fp16 features compress ~1.08x; see README)")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options for source and store")
    shards: list[int] | None = Field(default=None, description="only cache these shard ids (scale-out)")
    calibration_samples: int = Field(default=512, ge=1, description="training images the int8/PCA storage is "
                                                                      "fitted on (before the store is created)")
    prune: bool = Field(default=False, description="samples whose file left the source are marked invalid "
                                                   "(default: reported and kept)")
    rehash: bool = Field(default=False, description="read every source file and record its content digest as its "
                                                    "signature (default: ETag, or size + mtime from the listing); a "
                                                    "re-run re-caches the files whose signature changed")
    views: int = Field(default=1, ge=1, description="K views per image, each its own sample '<id>#<k>'")
    view_mode: Literal["center", "random"] = Field(
        default="center", description="center: resize + centre crop; random: random resized crop (scale 0.4-1) + "
                                      "flip, drawn from a seed stored per sample so the view can be replayed")
    view_seed: int = Field(default=0, description="base seed of random views")

    @field_validator("teachers", mode="before")
    @classmethod
    def _teachers(cls, v: Any) -> Any:
        if isinstance(v, (str, dict)):
            v = [v]
        return [{"name": t} if isinstance(t, str) else t for t in v]

    @field_validator("image_size", mode="before")
    @classmethod
    def _hw(cls, v: Any) -> tuple[int, int]:
        return parse_hw(v)

    @model_validator(mode="after")
    def _check(self) -> "CacheConfig":
        check_multiple("image_size", self.image_size, self.student_patch, "student_patch")
        names = [t.name for t in self.teachers]
        if len(set(names)) != len(names):
            raise ValueError(f"each teacher may appear once, got {names}")
        return self
