"""Run configurations (pydantic). The same models back the CLI, the Prefect flow parameters and YAML files."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from storage_schemas.attrs import field_errors


def parse_hw(value: Any) -> tuple[int, int]:
    """224 -> (224, 224); '224x336' / [224, 336] -> (224, 336) as (height, width)."""
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, str):
        parts = value.lower().replace(",", "x").split("x")
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"image size must be N or HxW, got {value!r}") from None
        return parse_hw(nums[0] if len(nums) == 1 else nums)
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return (int(value[0]), int(value[1]))
    raise ValueError(f"image size must be N or HxW, got {value!r}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TeacherConfig(_Strict):
    name: str = Field(description="registry name, e.g. dinov2_vits14_reg (see `distillkit teachers`)")
    checkpoint: str | None = Field(
        default=None, description="local path, fsspec URL or hf-hub:<repo>; None = random init (loudly recorded)")
    seed: int = Field(default=0, description="seed of the random init when no checkpoint is given")
    overrides: dict[str, int | float | str | bool] = Field(
        default_factory=dict, description="architecture overrides, e.g. {depth: 2} for small test configs")
    dtype: Literal["float16", "float32"] = "float16"
    grid: Literal["student", "own"] = Field(
        default="student", description="student = tokens on the student's grid (input = grid x teacher patch); "
        "own = student input rounded to a multiple of the teacher patch (the teacher's own grid)")


class CacheConfig(_Strict):
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
        h, w = self.image_size
        if h % self.student_patch or w % self.student_patch:
            raise ValueError(f"image_size {h}x{w} must be a multiple of student_patch {self.student_patch}")
        names = [t.name for t in self.teachers]
        if len(set(names)) != len(names):
            raise ValueError(f"each teacher may appear once, got {names}")
        return self


class StudentConfig(_Strict):
    """DUNE-style ViT student (timm VisionTransformer with registers)."""

    preset: Literal["vit_tiny", "vit_small", "vit_base", "custom"] = "vit_small"
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    num_registers: int = 4
    layerscale_init: float = 1e-4

    def dims(self) -> tuple[int, int, int]:
        presets = {"vit_tiny": (192, 12, 3), "vit_small": (384, 12, 6), "vit_base": (768, 12, 12)}
        dim, depth, heads = presets.get(self.preset, (384, 12, 6))
        return (self.embed_dim or dim, self.depth or depth, self.num_heads or heads)


class GroupConfig(_Strict):
    """A domain group for teacher-balanced batches (DUNE Tab. 5): its stores and the teacher it belongs to."""

    name: str
    stores: list[str] = Field(min_length=1)
    teacher: str = Field(description="the group's own teacher (data sharing 'none'/'generic' train only it)")


class TrainConfig(_Strict):
    """Parameters of `distillkit train` and the `train-student` flow (DUNE-style students from feature stores;
    ``task: pointmap`` selects `config_pointmap.PointmapJobConfig` instead)."""

    task: Literal["dune"] = Field(default="dune", description="dune: multi-teacher feature distillation; "
                                  "pointmap: scene-specific pointmap students (PointmapJobConfig)")
    stores: list[str] = Field(default_factory=list, description="teacher stores to stream (zipped by sample id)")
    out_dir: str = Field(description="where checkpoints, metrics.json and loss_curve.png go")
    teachers: list[str] | None = Field(default=None, description="subset of teachers; None = all in the stores")
    student: StudentConfig = Field(default_factory=StudentConfig)
    projector: Literal["tp", "sp", "mlp", "lp"] = Field(
        default="tp", description="tp transformer projector | sp (= mlp) 2-layer MLP | lp ladder on every block")
    teacher_drop: Literal["none", "lowest_loss"] = Field(
        default="none", description="lowest_loss: per image keep the worst-fit teacher, drop each other with p")
    teacher_drop_p: float = Field(default=0.5, ge=0.0, le=1.0)
    normalization: Literal["standard", "phi-s"] = Field(
        default="standard", description="teacher targets: per-channel standardisation (store stats) or PHI-S")
    color_jitter: float = Field(default=0.0, ge=0.0, le=1.0,
                                description="student-only photometric jitter strength (targets are fixed)")
    groups: list[GroupConfig] | None = Field(
        default=None, description="teacher-balanced batches: one entry per domain group (stores + own teacher)")
    data_sharing: Literal["full", "generic", "none"] = Field(
        default="full", description="which teachers train on a group's images: all | own (+all for the generic group) "
                                    "| own only")
    generic_group: str | None = Field(default=None, description="group whose images train every teacher (generic)")
    batch_size: int = Field(default=32, ge=1)
    epochs: float = Field(default=1.0, gt=0, description="passes over the training split (fractions allowed)")
    max_steps: int | None = Field(default=None, ge=1, description="stop after this many steps (overrides epochs)")
    lr: float = Field(default=3e-4, gt=0, description="peak learning rate (DUNE: 3e-4 x batch/256)")
    min_lr: float = Field(default=1e-6, ge=0)
    weight_decay: float = 0.03
    warmup_fraction: float = Field(default=0.1, ge=0, le=1)
    grad_clip: float = Field(default=1.0, ge=0, description="0 disables")
    seed: int = 0
    shuffle_shards: int = Field(default=2, ge=1, description="shards mixed in one shuffle block")
    num_workers: int = Field(default=2, ge=0, description="DataLoader workers for the streaming reader")
    device: str = "auto"
    eval_every: int = Field(default=0, ge=0, description="evaluate every N steps (0 = at the end only)")
    ckpt_every: int = Field(default=50, ge=1, description="checkpoint every N steps (and at the end)")
    max_eval_samples: int = Field(default=256, ge=1)
    resume: bool = Field(default=True, description="continue from out_dir/checkpoint-last.pt if present")
    init_from: str | None = Field(default=None, description="start from this checkpoint's weights (fine-tuning)")
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


def read_config_file(path: str | Path | None) -> dict[str, Any]:
    """The mapping in a YAML config file ({} without a file); errors name the file."""
    if path is None:
        return {}
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except OSError as e:
        raise ValueError(f"cannot read config file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    return data


def validate_config(model: type[BaseModel], data: dict[str, Any], path: str | Path | None = None) -> BaseModel:
    """`model` from `data`; errors name the file (if any) and every bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        where = f"config file {path}" if path else "config"
        raise ValueError(f"{where}: {field_errors(e)}") from None


def merged_config_data(path: str | Path | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """The YAML file's mapping with the overrides that were given (None = not given) on top."""
    data = read_config_file(path)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return data


def load_config(model: type[BaseModel], path: str | Path | None = None, **overrides: Any) -> BaseModel:
    """Build a config from an optional YAML file plus overrides (None = not given); errors name the file and field."""
    return validate_config(model, merged_config_data(path, overrides), path)


TRAIN_TASKS = ("dune", "pointmap")


def train_config_model(data: dict[str, Any], path: str | Path | None = None) -> type[BaseModel]:
    """The config model of a training task: TrainConfig (``task: dune``, the default) or PointmapJobConfig."""
    task = data.get("task") or "dune"
    if task not in TRAIN_TASKS:
        where = f"config file {path}" if path else "config"
        raise ValueError(f"{where}: task: unknown training task {task!r} (choose from {', '.join(TRAIN_TASKS)})")
    if task == "pointmap":
        from .config_pointmap import PointmapJobConfig

        return PointmapJobConfig
    return TrainConfig


def load_train_config(path: str | Path | None = None, **overrides: Any) -> BaseModel:
    """`load_config` for `distillkit train` / `train-student`: the task (file or override) picks the model."""
    data = merged_config_data(path, overrides)
    return validate_config(train_config_model(data, path), data, path)


_SECRET_WORDS = ("secret", "password", "token", "key", "credential", "session")


def redact(options: Any) -> Any:
    """A copy of fsspec storage options safe to log or store: values of credential-like keys become '***'."""
    if isinstance(options, dict):
        return {k: "***" if any(w in str(k).lower() for w in _SECRET_WORDS) and not isinstance(v, (dict, list))
                else redact(v) for k, v in options.items()}
    if isinstance(options, list):
        return [redact(v) for v in options]
    return options


def safe_url(url: str) -> str:
    """Drop user:password@ from a URL before it is stored or logged."""
    from urllib.parse import urlsplit, urlunsplit

    if "://" not in url:
        return url
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return url


# ------------------------------------------------------------------------------------------ DUSt3R scene stores
# (distillkit.scenes / the `align-scenes` flow; added as a block so the models above stay untouched)
class SceneNetworkConfig(_Strict):
    """The pairwise DUSt3R/MASt3R network (our own implementation, distillkit/teachers/croco)."""

    checkpoint: str | None = Field(
        default=None, description="local path, fsspec URL or hf-hub:<repo>; None = random init (loudly recorded)")
    seed: int = Field(default=0, description="seed of the random init")
    base: str = Field(default="DUSt3R_ViTLarge_BaseDecoder_512_dpt",
                      description="released architecture a random init starts from")
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="CroCoConfig fields on top of `base` for a random init, e.g. "
        "{enc_embed_dim: 64, enc_depth: 2, enc_num_heads: 2, dec_embed_dim: 32, dec_depth: 2, dec_num_heads: 2, "
        "head_type: linear} for tests")
    head_overrides: dict[str, Any] = Field(
        default_factory=dict, description="head widths of a checkpoint with non-released heads (load_model)")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        default="float32", description="autocast dtype on CUDA (heads stay float32); CPU always runs float32")


class SceneAlignSettings(_Strict):
    """Global alignment (distillkit.geometry.align); known poses/intrinsics are used only where the dataset has them."""

    known_poses: bool = Field(default=True, description="fix the cameras to the dataset's GT poses (metric frame)")
    known_intrinsics: bool = Field(default=True, description="fix focal and principal point to the dataset's")
    min_conf_thr: float = Field(default=3.0, description="mask = confidence > this (DUSt3R's default 3)")
    pose_pixels: int | None = Field(default=4096, description="pixels per image in the joint pose stage")
    max_iters: int = Field(default=30, ge=1)
    tol: float = Field(default=1e-5, gt=0)
    threads: int | None = Field(default=1, ge=1, description="torch intra-op threads while aligning (the solver's "
                                "small products are fastest on 1 thread on shared CPUs); None = leave as is")


class SceneCacheConfig(_Strict):
    """Parameters of the `align-scenes` flow (also run by `cache-teachers` when given `scenes=`)."""

    source: str = Field(description="dataset root or one scene: 12-Scenes, 7-Scenes or image folders (fsspec URL ok)")
    store: str = Field(description="output Zarr v3 scene store: local path or fsspec URL")
    layout: Literal["auto", "12scenes", "7scenes", "folder"] = Field(default="auto", description="auto-detected")
    scenes: list[str] | None = Field(default=None, description="only these scene names (default: all found)")
    splits: list[Literal["train", "test"]] = Field(default_factory=lambda: ["train", "test"], min_length=1)
    frame_stride: int = Field(default=1, ge=1, description="keep every k-th frame (after the split filter)")
    max_frames: int | None = Field(default=24, ge=2, description="then at most this many, evenly spread")
    predictor: Literal["network", "gt-depth"] = Field(
        default="network", description="gt-depth: exact pairs from GT depth instead of the network (tests, bounds)")
    network: SceneNetworkConfig = Field(default_factory=SceneNetworkConfig)
    image_size: int = Field(default=512, ge=16, description="DUSt3R loader size: 512, 224, or any multiple of 16")
    graph: str = Field(default="swin-3-noncyclic", description="complete | swin-K | logwin-K | oneref-R "
                       "(+ -noncyclic) | overlap-K (K best-overlapping partners from the GT poses)")
    symmetrize: bool = True
    batch_size: int = Field(default=8, ge=1, description="images per encoder call and pairs per decoder call")
    device: str = Field(default="auto", description="auto | cpu | cuda | cuda:N")
    align: SceneAlignSettings = Field(default_factory=SceneAlignSettings)
    frames_per_shard: int = Field(default=32, ge=1, description="frames (and edges) per storage shard")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options for source and store")

    @model_validator(mode="after")
    def _check(self) -> "SceneCacheConfig":
        if self.image_size % 16:
            raise ValueError(f"image_size {self.image_size} must be a multiple of 16 (the DUSt3R patch size)")
        g = self.graph
        if not (g == "complete" or g.split("-")[0] in ("swin", "logwin", "oneref", "overlap")):
            raise ValueError(f"unknown graph {g!r} (complete | swin-K | logwin-K | oneref-R | overlap-K)")
        return self
