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

from distillkit.store import growth, layout, sample_index, stats, summary
from distillkit.store.writer import drop_inflight_dir

if TYPE_CHECKING:
    from distillkit.config.cache import CacheConfig

log = logging.getLogger("distillkit")


REPAIR_ATTR = "distillkit_repair"  # the shards a repair is recomputing (their shard_done was reset)


def finalize_store(cfg: CacheConfig | str, storage_options: dict | None = None) -> dict:
    """Merge statistics and mark the store complete once every shard is done. Idempotent.

    Reads what changed only: a complete store is not re-read (its shards are all done, its index and statistics
    written); an append reads the new shards' marks, rows and partials, and the previous version's index."""
    url = cfg if isinstance(cfg, str) else cfg.store
    so = storage_options if isinstance(cfg, str) else cfg.storage_options
    group = layout.open_group(url, "r+", so)
    manifest = Manifest.model_validate(group.attrs[layout.MANIFEST_ATTR])
    previous = manifest  # the served version
    intent = growth.pending_intent(group)
    repairing = group.attrs.get(REPAIR_ATTR)
    if intent is not None:  # an append (or prune) to finish: the new version's size and fingerprint
        manifest = manifest.model_copy(update={"n_samples": intent["to_samples"], "status": "in_progress",
                                               "source_fingerprint": intent["source_fingerprint"]})
    if previous.status == "complete" and intent is None and not repairing:
        if manifest.sample_index is None:  # finalized before the index existed: add it (same version)
            manifest.sample_index = write_sample_index(group, manifest)
            group.attrs[layout.MANIFEST_ATTR] = manifest.model_dump(mode="json")
            _consolidate(group)
            log.info("store %s: sample index %s added", url, manifest.sample_index)
        return {"status": "complete", "changed": False, **_counts(manifest)}
    # the shards a complete version has are done: only those after it need a look
    first = previous.n_shards if previous.status == "complete" and not repairing else 0
    done = group["progress/shard_done"][first:]
    if not done.all():
        missing = first + np.flatnonzero(done == 0)
        log.info("store %s: %d/%d shards done; not finalizing yet", url, first + int(done.sum()), first + len(done))
        return {"status": "in_progress", "missing_shards": missing.tolist()}
    drop_inflight_dir(group)  # every shard done: nothing is in flight
    if manifest.status == "complete":  # a killed repair's shards are done again: its statistics and index
        merge_statistics(group, manifest)
        if manifest.sample_index is not None:
            write_sample_index(group, manifest)
        rewrite_summary(group, manifest)
        group.attrs[REPAIR_ATTR] = None
        _consolidate(group)
        return {"status": "complete", "changed": False, **_counts(manifest)}
    rewrote_old = intent is not None and (intent.get("pruned") or intent.get("replaced"))
    since = previous.n_samples if intent is not None and not rewrote_old else 0
    table = _new_table(group, previous, manifest, since)
    valid = table["valid"]
    merge_statistics(group, manifest, from_shard=first if since else 0)
    manifest.status = "complete"
    manifest.finished = utcnow()
    manifest.n_valid = int(valid.sum())
    manifest.n_rejected = int(((table["id"] != "") & (valid == 0)).sum())
    manifest.version += 1
    manifest.sample_index = write_sample_index(group, manifest, table)
    summary.write_summary(group, manifest, table, growth.padded_start(previous) if since else 0, previous.version)
    # one root update: the new version becomes visible and the append ends at the same moment
    group.attrs.update({layout.MANIFEST_ATTR: manifest.model_dump(mode="json"), growth.APPEND_ATTR: None})
    sample_index.drop_old(group, manifest.version)
    _consolidate(group)
    log.info("store %s complete: %d valid, %d rejected", url, manifest.n_valid, manifest.n_rejected)
    return {"status": "complete", "changed": True, **_counts(manifest)}


def _new_table(group: zarr.Group, previous: Manifest, manifest: Manifest, since: int) -> dict[str, np.ndarray]:
    """The new version's sample table (id, valid, split, digest): rows [0, since) from the previous version's index
    (a few large objects), the rest from samples/ (one object per shard: only the new ones). `since` 0, or an
    index without digests or unreadable: every row from samples/."""
    if since and previous.sample_index is not None:
        try:
            old = sample_index.read_columns(group, previous.sample_index, since, digests=True)
        except (KeyError, ValueError) as e:
            log.warning("sample index %s unreadable (%s); reading samples/ instead", previous.sample_index, e)
            old = None
        if old is not None and "digest" in old:
            new = sample_index.read_columns(group, "samples", manifest.n_samples, start=since)
            new["digest"] = sample_index.digests_of(group, "samples", since, manifest.n_samples,
                                                    manifest.signatures, new["id"])
            return {k: np.concatenate([old[k], new[k]]) for k in new}
    table = sample_index.read_columns(group, "samples", manifest.n_samples)
    table["digest"] = sample_index.digests_of(group, "samples", 0, manifest.n_samples, manifest.signatures,
                                              table["id"])
    return table


def write_sample_index(group: zarr.Group, manifest: Manifest, table: dict[str, np.ndarray] | None = None) -> str:
    """The index of the manifest's version, from samples/ (finalize passes the table it already read; repair
    rewrites the index)."""
    if table is None:
        table = _new_table(group, manifest, manifest, 0)
    return sample_index.write(group, manifest, table)


def rewrite_summary(group: zarr.Group, manifest: Manifest) -> None:
    """The summary of the served version from the whole store (after a repair rewrote shards)."""
    summary.write_summary(group, manifest, sample_index.read_columns(group, "samples", manifest.n_samples))


def _consolidate(group: zarr.Group) -> None:
    with warnings.catch_warnings():  # zarr: consolidated metadata is an extension of the v3 spec
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(group.store)


RUNNING = "running_{tok}_{stat}"  # float64 merged partials of shards [0, attrs["shards"]), beside the stats


def merge_statistics(group: zarr.Group, manifest: Manifest, from_shard: int = 0) -> None:
    """The store's exact per-channel statistics from the per-shard partials, merged in shard order.

    `from_shard` > 0 (an append): the stored running totals of shards [0, from_shard) merged with the new shards'
    partials only. Chan's merge is a left fold in shard order, so this gives the same bits as merging every shard;
    totals of another shard count (a prune rewrote old partials, a killed finalize) fall back to all shards."""
    for name in manifest.teachers:
        stat = partial(paths.stats, name)
        tokens = int(np.prod(group[paths.patch(name)].shape[1:3]))
        kinds = [("patch", tokens), ("cls", 1)]
        if stat("shard_coef_patch_mean") in group:  # a projecting storage: the coefficients' statistics too
            kinds += [("coef_patch", tokens), ("coef_cls", 1)]
        start = from_shard if from_shard and _running_through(group, stat, kinds) == from_shard else 0
        counts = group[stat("shard_count")][start:manifest.n_shards]
        total = 0
        for tok, mult in kinds:
            sl = slice(start, manifest.n_shards)
            means, m2s = group[stat(f"shard_{tok}_mean")][sl], group[stat(f"shard_{tok}_m2")][sl]
            parts = [_running(group, stat, tok)] if start else []
            n, mean, m2 = stats.merge(parts + [(int(c) * mult, means[i], m2s[i]) for i, c in enumerate(counts)])
            group[stat(f"{tok}_mean")][:] = mean.astype(np.float32)
            group[stat(f"{tok}_std")][:] = stats.std_from(n, m2).astype(np.float32)
            _store_running(group, stat, tok, n, mean, m2, manifest.n_shards)
            if tok == "patch":
                total = n // mult
        group[stat("count")][...] = int(total)


def _running(group: zarr.Group, stat, tok: str) -> tuple[int, np.ndarray, np.ndarray]:
    mean = group[stat(RUNNING.format(tok=tok, stat="mean"))]
    return int(mean.attrs["n"]), mean[:], group[stat(RUNNING.format(tok=tok, stat="m2"))][:]


def _running_through(group: zarr.Group, stat, kinds) -> int:
    """The shard count every running total was merged over (-1: missing or inconsistent)."""
    seen = set()
    for tok, _ in kinds:
        for which in ("mean", "m2"):
            path = stat(RUNNING.format(tok=tok, stat=which))
            seen.add(group[path].attrs.get("shards", -1) if path in group else -1)
    return seen.pop() if len(seen) == 1 else -1


def _store_running(group: zarr.Group, stat, tok: str, n: int, mean: np.ndarray, m2: np.ndarray, shards: int) -> None:
    """The float64 totals (not in the schema: the next append's starting point). Written before the manifest: a
    finalize killed after this finds totals of a shard count its old version does not have, and merges all."""
    for which, values in (("mean", mean), ("m2", m2)):
        path = stat(RUNNING.format(tok=tok, stat=which))
        arr = group.require_array(path, shape=values.shape, dtype="float64", fill_value=0.0)
        arr[:] = values
        arr.attrs.update({"n": int(n), "shards": int(shards)})


def _counts(m: Manifest) -> dict:
    return {"n_samples": m.n_samples, "n_valid": m.n_valid, "n_rejected": m.n_rejected, "version": m.version}
