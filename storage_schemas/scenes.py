"""Schema of a distillkit *scene* store: DUSt3R pairwise outputs and globally aligned world-frame pointmaps.

One Zarr v3 group per store, one subgroup per scene (n frames of H x W, E directed pairs, S frames/edges
per storage shard)::

    /                              attrs["distillkit"] = SceneManifest (network provenance, graph, settings)
    progress/pairs_done  [n_scenes] uint8  chunk 1   (scene,)  1 once a scene's pair outputs are stored
    progress/scene_done  [n_scenes] uint8  chunk 1   (scene,)  1 once the scene is aligned and stored (LAST)
    scenes/<s>/                    attrs["scene"] = SceneInfo; attrs["alignment"] = SceneAlignment (when aligned)
      frame_id   [n] str      uri [n] str      split [n] uint8 (0 train, 1 test)          (frame,)
      image      [n,H,W,3] uint8     chunk 1 frame, shard S   (frame, y, x, rgb)   the network input
      pts3d      [n,H,W,3] float32   blosc lz4 bitshuffle     (frame, y, x, xyz)   world frame
      conf       [n,H,W]   float32   blosc                    (frame, y, x)        max over the pairs (>= 1)
      depth      [n,H,W]   float32   blosc                    (frame, y, x)        z in each camera
      mask       [n,H,W]   bool                               (frame, y, x)        conf > min_conf_thr
      cam2world  [n,4,4]   float64                            (frame, pose_row, pose_col)
      intrinsics [n,3,3]   float64                            (frame, k_row, k_col)  of `image`
      gt_cam2world [n,4,4], gt_intrinsics [n,3,3] float64     when the dataset has poses
      gt_depth   [n,H,W]   float32   (0 = invalid)            when the dataset has depth
      pairs/edges [E,2] int32 (edge, ij);  pairs/{pts1,pts2} [E,H,W,3], pairs/{conf1,conf2} [E,H,W] float32
                  (edge, y, x[, xyz]): DUSt3R's view-1 / view-2 points, both in camera i's frame, and their
                  confidences, so alignment can be re-run without the network

Needs only pydantic, numpy and zarr (no torch). Written by ``distillkit.scenes``.
"""

from __future__ import annotations

from typing import Any, Literal

import zarr
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .arrays import Problem, check_array
from .attrs import read_attr_model, read_node_attr_model
from .v1 import MANIFEST_ATTR, ArraySpec, utcnow

SCENES_SCHEMA_VERSION = "distillkit-scenes/v1"
SCENE_ATTR = "scene"
ALIGNMENT_ATTR = "alignment"
SPLIT_NAMES = ("train", "test")


class NetworkProvenance(BaseModel):
    """Which pairwise predictor produced the pair outputs."""

    model_config = ConfigDict(extra="forbid")

    predictor: Literal["network", "gt-depth"] = Field(
        description="network = our DUSt3R network; gt-depth = exact pairs from GT depth (oracle, for testing)")
    arch: str = Field(description="e.g. AsymmetricCroCo3DStereo")
    config: dict[str, Any] = Field(default_factory=dict, description="CroCoConfig fields of the network")
    checkpoint: str = Field(description="path/URL/hub id of the weights, or random-init:<seed>")
    checkpoint_sha256: str = Field(description="sha256 of the checkpoint bytes, or random-init:<seed>")
    dtype: str = "float32"
    distillkit_version: str = ""

    @property
    def is_random_init(self) -> bool:
        return self.checkpoint_sha256.startswith("random-init:")


class SceneManifest(BaseModel):
    """Root attributes of a scene store."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal["distillkit-scenes/v1"] = SCENES_SCHEMA_VERSION
    status: Literal["in_progress", "complete"] = "in_progress"
    created: str = Field(default_factory=utcnow)
    finished: str | None = None
    distillkit_version: str = ""
    source: str
    source_fingerprint: str = Field(description="sha256 over the planned scenes, frames, splits and GT poses")
    layout: str = Field(description="requested source layout (auto / 12scenes / 7scenes / folder)")
    scenes: list[str] = Field(min_length=1, description="scene group names, in progress-array order")
    image_size: int = Field(description="DUSt3R loader size (long side; 224 = short side + square crop)")
    graph: str
    symmetrize: bool = True
    frames_per_shard: int = Field(ge=1)
    network: NetworkProvenance
    align: dict[str, Any] = Field(default_factory=dict, description="alignment settings of the run")
    version: int = 0

    @field_validator("scenes")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"scene names must be unique, got {v}")
        return v


class SceneInfo(BaseModel):
    """What a scene group holds (written at creation)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    layout: Literal["12scenes", "7scenes", "folder"]
    root: str = Field(description="the scene folder in the source")
    n_frames: int = Field(ge=1)
    n_edges: int = Field(ge=1)
    image_hw: tuple[int, int]
    has_gt: bool = Field(description="gt_cam2world and gt_intrinsics are stored")
    has_gt_depth: bool = Field(description="gt_depth is stored")
    n_skipped_invalid: int = Field(default=0, description="frames dropped for non-finite poses")
    n_skipped_size: int = Field(default=0, description="frames dropped because their crop size differed")
    notes: str = ""


class SceneAlignment(BaseModel):
    """How a scene was aligned and how well (rewritten by `distillkit align`)."""

    model_config = ConfigDict(extra="allow")

    settings: dict[str, Any]
    used_known_poses: bool
    used_known_intrinsics: bool
    loss: float
    iterations: int
    residuals: dict[str, Any] = Field(default_factory=dict, description="scalars + per-frame / per-edge losses")
    gt_metrics: dict[str, Any] = Field(default_factory=dict, description="errors against GT, when present")
    timings: dict[str, float] = Field(default_factory=dict)
    aligned_at: str = Field(default_factory=utcnow)
    runs: int = Field(default=1, description="how many times this scene has been aligned")


class SceneArraySpec(ArraySpec):
    written_by: Literal["create", "scene", "pairs", "align"]  # type: ignore[assignment]


def read_scene_manifest(group: zarr.Group) -> SceneManifest:
    return read_attr_model(group.attrs, MANIFEST_ATTR, SceneManifest, missing_hint=": not a distillkit store")


def read_scene_info(group: zarr.Group, scene: str) -> SceneInfo:
    return read_node_attr_model(group, f"scenes/{scene}", SCENE_ATTR, SceneInfo)


def read_alignment(group: zarr.Group, scene: str) -> SceneAlignment | None:
    raw = group[f"scenes/{scene}"].attrs.get(ALIGNMENT_ATTR)
    return None if raw is None else SceneAlignment.model_validate(raw)


def shard_len(n: int, frames_per_shard: int) -> int:
    return max(1, min(n, frames_per_shard))


def expected_scene_arrays(manifest: SceneManifest, info: SceneInfo) -> list[SceneArraySpec]:
    """All arrays of one scene group, in creation order."""
    n, E = info.n_frames, info.n_edges
    H, W = info.image_hw
    S, Se = shard_len(n, manifest.frames_per_shard), shard_len(E, manifest.frames_per_shard)
    b = f"scenes/{info.name}"

    def spec(path, shape, dtype, dims, written_by, chunk_first=None, shard_first=None):
        chunks = shape if chunk_first is None else (chunk_first,) + tuple(shape[1:])
        shards = None if shard_first is None else (shard_first,) + tuple(shape[1:])
        return SceneArraySpec(path=f"{b}/{path}", shape=shape, dtype=dtype, dims=dims, chunks=chunks, shards=shards,
                              written_by=written_by)

    img = ("frame", "y", "x")
    specs = [
        spec("frame_id", (n,), "str", ("frame",), "create"),
        spec("uri", (n,), "str", ("frame",), "create"),
        spec("split", (n,), "uint8", ("frame",), "create"),
        spec("image", (n, H, W, 3), "uint8", img + ("rgb",), "scene", 1, S),
        spec("pts3d", (n, H, W, 3), "float32", img + ("xyz",), "align", 1, S),
        spec("conf", (n, H, W), "float32", img, "align", 1, S),
        spec("depth", (n, H, W), "float32", img, "align", 1, S),
        spec("mask", (n, H, W), "bool", img, "align", 1, S),
        spec("cam2world", (n, 4, 4), "float64", ("frame", "pose_row", "pose_col"), "align"),
        spec("intrinsics", (n, 3, 3), "float64", ("frame", "k_row", "k_col"), "align"),
    ]
    if info.has_gt:
        specs += [spec("gt_cam2world", (n, 4, 4), "float64", ("frame", "pose_row", "pose_col"), "create"),
                  spec("gt_intrinsics", (n, 3, 3), "float64", ("frame", "k_row", "k_col"), "create")]
    if info.has_gt_depth:
        specs.append(spec("gt_depth", (n, H, W), "float32", img, "scene", 1, S))
    ed = ("edge", "y", "x")
    specs += [
        spec("pairs/edges", (E, 2), "int32", ("edge", "ij"), "create"),
        spec("pairs/pts1", (E, H, W, 3), "float32", ed + ("xyz",), "pairs", 1, Se),
        spec("pairs/pts2", (E, H, W, 3), "float32", ed + ("xyz",), "pairs", 1, Se),
        spec("pairs/conf1", (E, H, W), "float32", ed, "pairs", 1, Se),
        spec("pairs/conf2", (E, H, W), "float32", ed, "pairs", 1, Se),
    ]
    return specs


def expected_root_arrays(manifest: SceneManifest) -> list[SceneArraySpec]:
    k = len(manifest.scenes)
    return [SceneArraySpec(path=f"progress/{name}", shape=(k,), dtype="uint8", dims=("scene",), chunks=(1,),
                           written_by=w) for name, w in (("pairs_done", "pairs"), ("scene_done", "align"))]


def validate_scene_structure(group: zarr.Group) -> tuple[SceneManifest | None, dict[str, SceneInfo], list]:
    """Manifest, every scene's info and every array's metadata (no bulk data read)."""
    try:
        manifest = read_scene_manifest(group)
    except ValueError as e:
        return None, {}, [Problem("/", str(e))]
    infos, problems = {}, []
    for name in manifest.scenes:
        try:
            infos[name] = read_scene_info(group, name)
        except ValueError as e:
            problems.append(Problem(f"scenes/{name}", str(e)))
            continue
        if infos[name].name != name:
            problems.append(Problem(f"scenes/{name}", f"scene info names {infos[name].name!r}"))
    specs = expected_root_arrays(manifest) + [s for i in infos.values() for s in expected_scene_arrays(manifest, i)]
    for spec in specs:
        problems += check_array(group, spec)
    return manifest, infos, problems

