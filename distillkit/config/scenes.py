"""Parameters of `distillkit cache-scenes` and the `align-scenes` flow: DUSt3R pairs, alignment, scene stores."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from distillkit.config.common import Strict


class SceneNetworkConfig(Strict):
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


class SceneAlignSettings(Strict):
    """Global alignment (distillkit.geometry.align); known poses/intrinsics are used only where the dataset has them."""

    known_poses: bool = Field(default=True, description="fix the cameras to the dataset's GT poses (metric frame)")
    known_intrinsics: bool = Field(default=True, description="fix focal and principal point to the dataset's")
    min_conf_thr: float = Field(default=3.0, description="mask = confidence > this (DUSt3R's default 3)")
    pose_pixels: int | None = Field(default=4096, description="pixels per image in the joint pose stage")
    fine_iters: int = Field(default=3, ge=0, description="full-resolution Newton steps after the pose stage "
                            "(0: none; the pose-stage optimum is then off by its pixel sampling)")
    max_iters: int = Field(default=30, ge=1)
    tol: float = Field(default=1e-5, gt=0)
    threads: int | None = Field(default=1, ge=1, description="torch intra-op threads while aligning (the solver's "
                                "small products are fastest on 1 thread on shared CPUs); None = leave as is")


class SceneCacheConfig(Strict):
    """Parameters of the `align-scenes` flow (also run by `cache-teachers` when given `scenes=`)."""

    source: str = Field(description="dataset root or one scene: 12-Scenes, 7-Scenes or image folders (fsspec URL ok)")
    store: str = Field(description="output Zarr v3 scene store: local path or fsspec URL")
    layout: Literal["auto", "12scenes", "7scenes", "folder"] = Field(default="auto", description="auto-detected")
    scenes: list[str] | None = Field(default=None, description="only these scene names (default: all found)")
    splits: list[Literal["train", "test"]] = Field(default_factory=lambda: ["train", "test"], min_length=1)
    frame_stride: int = Field(default=1, ge=1, description="keep every k-th frame (after the split filter)")
    max_frames: int | None = Field(default=24, ge=2, description="then at most this many, evenly spread")
    mixed_sizes: Literal["error", "skip"] = Field(
        default="error", description="frames of one scene that crop to different sizes: an error naming them, "
        "or skip the ones not of the most common size")
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
