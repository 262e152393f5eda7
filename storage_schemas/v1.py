"""Schema v1 of a distillkit teacher-feature store (Zarr v3 group).

This module is the contract every store follows. It needs only pydantic, numpy and zarr, so a dataset engineer can
validate a store without torch or Prefect installed.

Layout (N samples, S samples per shard, n = ceil(N / S) shards)::

    /                          attrs["distillkit"] = Manifest
    samples/id        [N]        str      chunk S    (sample,)            written at creation
    samples/uri       [N]        str      chunk S    (sample,)            written at creation
    samples/split     [N]        uint8    chunk S    (sample,)            0 = train, 1 = val; written at creation
    samples/valid     [N]        uint8    chunk S    (sample,)            1 = teacher output stored; by the shard writer
    samples/error     [N]        str      chunk S    (sample,)            why a sample was rejected ('' if valid)
    samples/source_hw [N, 2]     int32    chunk S    (sample, hw)         decoded source image height, width
    samples/view      [N, 5]     float32  chunk S    (sample, view_param) crop box x0, y0, x1, y1 (source px), flip
    samples/view_seed [N]        int64    chunk S    (sample,)            seed the view was drawn with (replay)
    samples/image     [N, H, W, 3] uint8  chunk 1, shard S  (sample, y, x, rgb)  the student's input view
    teachers/<t>/patch [N, h, w, C] float16 chunk 1, shard S  (sample, y, x, channel)   attrs = TeacherProvenance
    teachers/<t>/cls   [N, C]      float16 chunk S            (sample, channel)
    teachers/<t>/stats/shard_{count,patch_mean,patch_m2,cls_mean,cls_m2}  per shard, chunk 1 shard  (shard, ...)
    teachers/<t>/stats/{patch_mean,patch_std,cls_mean,cls_std} [C] float32, count [] int64   written by finalize
    progress/shard_done [n]      uint8    chunk 1    (shard,)             1 once the shard's data is written (LAST)
    index/v<version>/{id,valid,split} [N]  chunk 2^20  (sample,)   the sample table of that version in a few objects,
                                 written by finalize (manifest.sample_index names it): readers open a store of
                                 millions of samples with a handful of requests instead of 3 per shard

Every array a shard writer touches is chunked so that one shard maps to whole chunks/shards of its own: no two
writers ever share an object.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from . import paths
from .storage import parse_storage

SCHEMA_VERSION = "distillkit-store/v1"
MANIFEST_ATTR = "distillkit"
# True while a store's arrays are being created (both kinds): without a manifest and with this unset, unfinished
CREATING_ATTR = "distillkit_creating"
PROVENANCE_ATTR = "provenance"
VIEW_PARAMS = ("x0", "y0", "x1", "y1", "flip")

# Fields of the provenance that must match exactly when a store is reopened for writing.
PROVENANCE_IDENTITY_FIELDS = (
    "name", "family", "arch", "arch_overrides", "checkpoint_sha256", "input_hw", "patch_size", "grid_hw",
    "embed_dim", "num_registers", "mean", "std", "output", "dtype", "resize", "storage",
)


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class TeacherProvenance(BaseModel):
    """Everything that determines a teacher's cached output; reopening with a different one is refused."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="teacher name as used in the store path teachers/<name>")
    family: str = Field(description="teacher family, e.g. dinov2")
    arch: str = Field(description="architecture id, e.g. the timm model name")
    arch_overrides: dict[str, int | float | str | bool] = Field(default_factory=dict)
    checkpoint: str = Field(description="where the weights came from (path/URL/hub id) or random-init:<seed>")
    checkpoint_sha256: str = Field(description="sha256 of the checkpoint bytes, or random-init:<seed>")
    input_hw: tuple[int, int] = Field(description="teacher input height, width in pixels")
    patch_size: int
    grid_hw: tuple[int, int] = Field(description="token grid height, width of the cached patch tokens")
    embed_dim: int
    num_registers: int = 0
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    output: str = Field(description="which tokens are cached, e.g. 'cls+patch after final norm'")
    dtype: Literal["float16", "float32"] = "float16"
    resize: str = Field(description="how the source image became the teacher input")
    distillkit_version: str = ""
    storage: str = Field(default="fp16", description="how patch tokens are stored: fp16 | int8 | pca:K[+int8] "
                                                     "(see storage_schemas/storage.py)")
    storage_sha256: str = Field(default="", description="sha256 of the codec arrays (basis, mean, scale, offset)")

    # Marker in `output` of teachers without a CLS token (MASt3R, Multi-HMR encoders): their `cls` array holds the
    # mean of the patch tokens, a placeholder that is no distillation target. Old stores lack it: has_cls is True.
    CLS_IS_PATCH_MEAN: ClassVar[str] = "cls = mean of the patch tokens (no CLS target)"

    @property
    def is_random_init(self) -> bool:
        return self.checkpoint_sha256.startswith("random-init:")

    @property
    def has_cls(self) -> bool:
        """False when the stored `cls` is only the patch mean: the trainer skips the CLS loss for this teacher."""
        return self.CLS_IS_PATCH_MEAN not in self.output

    def identity(self) -> dict:
        data = self.model_dump(mode="json")
        return {k: data[k] for k in PROVENANCE_IDENTITY_FIELDS}


class Manifest(BaseModel):
    """Root attributes of a store."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal["distillkit-store/v1"] = SCHEMA_VERSION
    status: Literal["in_progress", "complete"] = "in_progress"
    created: str = Field(default_factory=utcnow)
    finished: str | None = None
    distillkit_version: str = ""
    source: str = Field(description="the source the sample table was planned from")
    source_fingerprint: str = Field(description="sha256 over the planned sample ids and uris")
    n_samples: int = Field(ge=1)
    shard_size: int = Field(ge=1)
    image_hw: tuple[int, int] = Field(description="student input view stored in samples/image")
    student_patch: int = Field(ge=1)
    val_fraction: float = Field(ge=0.0, lt=1.0)
    views: int = Field(default=1, ge=1, description="views per source image (K replayable views)")
    view_mode: str = Field(default="center", description="center crop, or random resized crop + flip (seeded)")
    teachers: list[str] = Field(min_length=1)
    n_valid: int | None = None
    n_rejected: int | None = None
    version: int = Field(default=0, description="bumped every time the store's content is finalized anew")
    sample_index: str | None = Field(default=None, description="group holding this version's sample table in "
                                     "large chunks (index/v<version>), written by finalize; None: read samples/")
    signatures: bool = Field(default=False, description="samples/signature records what each source file was "
                             "when cached (ETag, or size and mtime; a content digest with --rehash): a re-run "
                             "re-caches files replaced in place. False in stores written before it existed")

    @field_validator("teachers")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"teacher names must be unique, got {v}")
        return v

    @property
    def n_shards(self) -> int:
        return math.ceil(self.n_samples / self.shard_size)


class ArraySpec(BaseModel):
    """The expected shape/dtype/layout of one array."""

    path: str
    shape: tuple[int, ...]
    dtype: str
    dims: tuple[str, ...]
    chunks: tuple[int, ...]
    shards: tuple[int, ...] | None = None
    written_by: Literal["create", "shard", "finalize"]


def expected_arrays(manifest: Manifest, teachers: dict[str, TeacherProvenance]) -> list[ArraySpec]:
    """All arrays of a store described by `manifest`, in creation order."""
    n, s, k = manifest.n_samples, manifest.shard_size, manifest.n_shards
    h, w = manifest.image_hw
    specs = [
        ArraySpec(path="samples/id", shape=(n,), dtype="str", dims=("sample",), chunks=(s,), written_by="create"),
        ArraySpec(path="samples/uri", shape=(n,), dtype="str", dims=("sample",), chunks=(s,), written_by="create"),
        ArraySpec(path="samples/split", shape=(n,), dtype="uint8", dims=("sample",), chunks=(s,), written_by="create"),
        ArraySpec(path="samples/valid", shape=(n,), dtype="uint8", dims=("sample",), chunks=(s,), written_by="shard"),
        ArraySpec(path="samples/error", shape=(n,), dtype="str", dims=("sample",), chunks=(s,), written_by="shard"),
        ArraySpec(path="samples/source_hw", shape=(n, 2), dtype="int32", dims=("sample", "hw"), chunks=(s, 2),
                  written_by="shard"),
        ArraySpec(path="samples/view", shape=(n, len(VIEW_PARAMS)), dtype="float32", dims=("sample", "view_param"),
                  chunks=(s, len(VIEW_PARAMS)), written_by="shard"),
        ArraySpec(path="samples/view_seed", shape=(n,), dtype="int64", dims=("sample",), chunks=(s,),
                  written_by="create"),
        *([ArraySpec(path="samples/signature", shape=(n,), dtype="str", dims=("sample",), chunks=(s,),
                     written_by="create")] if manifest.signatures else []),
        ArraySpec(path="samples/image", shape=(n, h, w, 3), dtype="uint8", dims=("sample", "y", "x", "rgb"),
                  chunks=(1, h, w, 3), shards=(s, h, w, 3), written_by="shard"),
    ]
    for name in manifest.teachers:
        p = teachers[name]
        gh, gw = p.grid_hw
        c = p.embed_dim
        store = parse_storage(p.storage, c)
        w = store.width(c)
        specs += [
            ArraySpec(path=paths.patch(name), shape=(n, gh, gw, w), dtype=store.dtype(p.dtype),
                      dims=("sample", "y", "x", store.dim),
                      chunks=(1, gh, gw, w), shards=(s, gh, gw, w), written_by="shard"),
            ArraySpec(path=paths.cls(name), shape=(n, c), dtype=store.dtype(p.dtype), dims=("sample", "channel"),
                      chunks=(s, c), written_by="shard"),
            ArraySpec(path=paths.stats(name, "shard_count"), shape=(k,), dtype="int64", dims=("shard",), chunks=(1,),
                      written_by="shard"),
        ]
        for tok in ("patch", "cls"):
            for stat in ("mean", "m2"):
                specs.append(ArraySpec(path=paths.stats(name, f"shard_{tok}_{stat}"), shape=(k, c), dtype="float64",
                                       dims=("shard", "channel"), chunks=(1, c), written_by="shard"))
        coef = [f"coef_{tok}" for tok in ("patch", "cls")] if store.projects else []
        for tok in coef:  # statistics of the coefficients: standardisation when training on them
            for stat in ("mean", "m2"):
                specs.append(ArraySpec(path=paths.stats(name, f"shard_{tok}_{stat}"), shape=(k, w), dtype="float64",
                                       dims=("shard", "coefficient"), chunks=(1, w), written_by="shard"))
        for array, (shape, dtype, dims) in store.codec_arrays(c).items():
            specs.append(ArraySpec(path=paths.codec(name, array), shape=shape, dtype=dtype, dims=dims, chunks=shape,
                                   written_by="create"))
        specs.append(ArraySpec(path=paths.stats(name, "count"), shape=(), dtype="int64", dims=(), chunks=(),
                               written_by="finalize"))
        for tok in ("patch", "cls"):
            for stat in ("mean", "std"):
                specs.append(ArraySpec(path=paths.stats(name, f"{tok}_{stat}"), shape=(c,), dtype="float32",
                                       dims=("channel",), chunks=(c,), written_by="finalize"))
        for tok in coef:
            for stat in ("mean", "std"):
                specs.append(ArraySpec(path=paths.stats(name, f"{tok}_{stat}"), shape=(w,), dtype="float32",
                                       dims=("coefficient",), chunks=(w,), written_by="finalize"))
    specs.append(ArraySpec(path="progress/shard_done", shape=(k,), dtype="uint8", dims=("shard",), chunks=(1,),
                           written_by="shard"))
    return specs


INDEX_ROWS = 1 << 20  # rows per chunk of the sample index: 21 objects per array for DUNE's 20.7 M images
INDEX_ARRAYS = {"id": "str", "valid": "uint8", "split": "uint8"}


def index_arrays(manifest: Manifest) -> list[ArraySpec]:
    """The sample index of the manifest's version (none before the first finalize)."""
    if manifest.sample_index is None:
        return []
    n = manifest.n_samples
    return [ArraySpec(path=f"{manifest.sample_index}/{k}", shape=(n,), dtype=dt, dims=("sample",),
                      chunks=(min(n, INDEX_ROWS),), written_by="finalize") for k, dt in INDEX_ARRAYS.items()]
