"""Finishing a feature store: merge the per-shard statistics, write the sample index, mark the version complete.

Store operations, shared by the caching pipeline (after the last shard) and by repair (after recomputing shards).
"""

from __future__ import annotations

import logging
import warnings
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import zarr

from distillkit_schemas import Manifest, paths
from distillkit_schemas.v1 import utcnow

from distillkit.store import growth, layout, sample_index, stats
from distillkit.store.writer import drop_inflight_dir

if TYPE_CHECKING:
    from distillkit.config.cache import CacheConfig

log = logging.getLogger("distillkit")


def finalize_store(cfg: CacheConfig | str, storage_options: dict | None = None) -> dict:
    """Merge statistics and mark the store complete once every shard is done. Idempotent."""
    url = cfg if isinstance(cfg, str) else cfg.store
    so = storage_options if isinstance(cfg, str) else cfg.storage_options
    group = layout.open_group(url, "r+", so)
    manifest = Manifest.model_validate(group.attrs[layout.MANIFEST_ATTR])
    intent = growth.pending_intent(group)
    if intent is not None:  # an append (or prune) to finish: the new version's size and fingerprint
        manifest = manifest.model_copy(update={"n_samples": intent["to_samples"], "status": "in_progress",
                                               "source_fingerprint": intent["source_fingerprint"]})
    done = group["progress/shard_done"][:]
    if not done.all():
        missing = np.flatnonzero(done == 0)
        log.info("store %s: %d/%d shards done; not finalizing yet", url, int(done.sum()), len(done))
        return {"status": "in_progress", "missing_shards": missing.tolist()}
    drop_inflight_dir(group)  # every shard done: nothing is in flight
    if manifest.status == "complete":
        if manifest.sample_index is None:  # finalized before the index existed: add it (same version)
            manifest.sample_index = write_sample_index(group, manifest)
            group.attrs[layout.MANIFEST_ATTR] = manifest.model_dump(mode="json")
            _consolidate(group)
            log.info("store %s: sample index %s added", url, manifest.sample_index)
        return {"status": "complete", "changed": False, **_counts(manifest)}
    table = sample_index.read_columns(group, "samples", manifest.n_samples)
    valid = table["valid"]
    merge_statistics(group, manifest)
    manifest.status = "complete"
    manifest.finished = utcnow()
    manifest.n_valid = int(valid.sum())
    manifest.n_rejected = int((~growth.is_padding(table["id"]) & (valid == 0)).sum())
    manifest.version += 1
    manifest.sample_index = write_sample_index(group, manifest, table)
    # one root update: the new version becomes visible and the append ends at the same moment
    group.attrs.update({layout.MANIFEST_ATTR: manifest.model_dump(mode="json"), growth.APPEND_ATTR: None})
    sample_index.drop_old(group, manifest.version)
    _consolidate(group)
    log.info("store %s complete: %d valid, %d rejected", url, manifest.n_valid, manifest.n_rejected)
    return {"status": "complete", "changed": True, **_counts(manifest)}


def write_sample_index(group: zarr.Group, manifest: Manifest, table: dict[str, np.ndarray] | None = None) -> str:
    """The index of the manifest's version, from samples/ (finalize passes the table it already read; repair
    rewrites the index)."""
    if table is None:
        table = sample_index.read_columns(group, "samples", manifest.n_samples)
    return sample_index.write(group, manifest, table)


def _consolidate(group: zarr.Group) -> None:
    with warnings.catch_warnings():  # zarr: consolidated metadata is an extension of the v3 spec
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(group.store)


def merge_statistics(group: zarr.Group, manifest: Manifest) -> None:
    """The store's exact per-channel statistics from the per-shard partials, merged in shard order."""
    for name in manifest.teachers:
        stat = partial(paths.stats, name)
        counts = group[stat("shard_count")][:]
        tokens = int(np.prod(group[paths.patch(name)].shape[1:3]))
        kinds = [("patch", tokens), ("cls", 1)]
        if stat("shard_coef_patch_mean") in group:  # a projecting storage: the coefficients' statistics too
            kinds += [("coef_patch", tokens), ("coef_cls", 1)]
        for tok, mult in kinds:
            means, m2s = group[stat(f"shard_{tok}_mean")][:], group[stat(f"shard_{tok}_m2")][:]
            n, mean, m2 = stats.merge([(int(c) * mult, means[i], m2s[i]) for i, c in enumerate(counts)])
            group[stat(f"{tok}_mean")][:] = mean.astype(np.float32)
            group[stat(f"{tok}_std")][:] = stats.std_from(n, m2).astype(np.float32)
        group[stat("count")][...] = int(counts.sum())


def _counts(m: Manifest) -> dict:
    return {"n_samples": m.n_samples, "n_valid": m.n_valid, "n_rejected": m.n_rejected, "version": m.version}
