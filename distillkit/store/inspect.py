"""Summaries (`distillkit inspect`) and content validation (`distillkit validate`) of a store."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import zarr

from distillkit_schemas import Problem, expected_arrays, is_scene_store, validate_structure
from distillkit_schemas.validate import read_manifest, read_provenance

from distillkit.store.layout import open_group


def _codec(arr: zarr.Array) -> str:
    comps = [type(c).__name__.replace("Codec", "").lower() + (f"({c.cname})" if hasattr(c, "cname") else "")
             for c in (arr.compressors or ())]
    return "+".join(comps) or "none"


@dataclass
class StoreSummary:
    url: str
    manifest: dict
    provenance: dict[str, dict]
    arrays: list[dict]
    shards_done: int
    n_shards: int
    rejected: list[dict] = field(default_factory=list)

    @property
    def completion(self) -> float:
        return 100.0 * self.shards_done / max(self.n_shards, 1)

    def as_dict(self) -> dict[str, Any]:
        return {"url": self.url, "manifest": self.manifest, "provenance": self.provenance, "arrays": self.arrays,
                "shards_done": self.shards_done, "n_shards": self.n_shards, "completion_pct": self.completion,
                "rejected": self.rejected}


def summarize(url: str, storage_options: dict | None = None) -> StoreSummary:
    group = open_group(url, "r", storage_options, consolidated=False)  # what is there, not what was consolidated
    if is_scene_store(group):  # scene stores (distillkit.scenes) have their own summary
        from distillkit.scenes.check import summarize_scenes

        return summarize_scenes(url, storage_options)  # type: ignore[return-value]
    manifest = read_manifest(group)
    provs = {t: read_provenance(group, t) for t in manifest.teachers}
    arrays = []
    for spec in expected_arrays(manifest, provs):
        try:
            arr = group[spec.path]
        except KeyError:
            arrays.append({"path": spec.path, "missing": True})
            continue
        raw = int(np.prod(arr.shape, dtype=np.int64)) * (arr.dtype.itemsize if arr.dtype.kind != "T" else 0)
        stored = int(arr.nbytes_stored())
        arrays.append({"path": spec.path, "shape": list(arr.shape), "dtype": str(arr.dtype),
                       "chunks": list(arr.chunks), "shards": list(arr.shards) if arr.shards else None,
                       "codec": _codec(arr), "stored_bytes": stored, "raw_bytes": raw,
                       "ratio": (raw / stored) if stored and raw else None})
    done = group["progress/shard_done"][:]
    valid = group["samples/valid"][:]
    rejected = []
    shard = manifest.shard_size
    bad_rows = [r for r in np.flatnonzero(valid == 0) if done[r // shard]]
    if bad_rows:
        ids, errs, uris = group["samples/id"], group["samples/error"], group["samples/uri"]
        for r in bad_rows:
            rejected.append({"id": str(ids[r]), "uri": str(uris[r]), "reason": str(errs[r])})
    return StoreSummary(url=url, manifest=manifest.model_dump(mode="json"),
                        provenance={t: p.model_dump(mode="json") for t, p in provs.items()}, arrays=arrays,
                        shards_done=int(done.sum()), n_shards=len(done), rejected=rejected)


def validate_store(url: str, storage_options: dict | None = None,
                   progress: Callable[[int, int], None] | None = None) -> list[Problem]:
    """Schema, completeness and content checks. Returns every problem found (empty list = valid)."""
    try:
        group = open_group(url, "r", storage_options, consolidated=False)
    except Exception as e:
        return [Problem(url, f"cannot open as a Zarr v3 group: {e}")]
    if is_scene_store(group):  # scene stores (distillkit.scenes): their own content checks
        from distillkit.scenes.check import validate_scenes

        return validate_scenes(url, storage_options, progress)
    manifest, provs, problems = validate_structure(group)
    if manifest is None or problems:
        return problems
    done = group["progress/shard_done"][:]
    for s in np.flatnonzero(done == 0):
        problems.append(Problem(f"progress/shard_done[{s}]", "shard not written (run `distillkit cache` again)"))
    if manifest.status != "complete":
        problems.append(Problem("/", f"manifest status is {manifest.status!r}, not 'complete'"))
    ids = group["samples/id"][:]
    if len(set(ids.tolist())) != len(ids):
        problems.append(Problem("samples/id", "sample ids are not unique"))
    if any(not str(i) for i in ids.tolist()):
        problems.append(Problem("samples/id", "empty sample id"))
    valid = group["samples/valid"][:]
    errors = group["samples/error"][:]
    n = manifest.n_samples
    done_shards = np.flatnonzero(done)
    for k, s in enumerate(done_shards):
        sl = slice(s * manifest.shard_size, min((s + 1) * manifest.shard_size, n))
        ok = valid[sl].astype(bool)
        for r in np.flatnonzero(~ok) + sl.start:
            if not str(errors[r]):
                problems.append(Problem(f"samples/error[{r}]", "sample marked invalid without a reason"))
        for t in manifest.teachers:
            for kind in ("patch", "cls"):
                path = f"teachers/{t}/{kind}"
                data = group[path][sl]
                flat = data.reshape(data.shape[0], -1)
                finite = np.isfinite(flat).all(axis=1)
                for r in np.flatnonzero(ok & ~finite) + sl.start:
                    problems.append(Problem(f"{path}[{r}]", f"NaN/Inf in a valid sample ({ids[r]})"))
                for r in np.flatnonzero(~ok & ~np.isnan(flat).all(axis=1)) + sl.start:
                    problems.append(Problem(f"{path}[{r}]", "rejected sample holds data (expected NaN)"))
        if progress:
            progress(k + 1, len(done_shards))
    if manifest.status == "complete":
        for t in manifest.teachers:
            for name in ("patch_mean", "patch_std", "cls_mean", "cls_std"):
                path = f"teachers/{t}/stats/{name}"
                if not np.isfinite(group[path][:]).all():
                    problems.append(Problem(path, "statistics are not finite"))
        if manifest.n_valid is not None and manifest.n_valid != int(valid.sum()):
            problems.append(Problem("/", f"manifest n_valid={manifest.n_valid} but samples/valid has "
                                         f"{int(valid.sum())}"))
    return problems
