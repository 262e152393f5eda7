"""`distillkit cache --repair`: verify every checksum, recompute exactly the damaged shards."""

from __future__ import annotations

import logging
import time

import zarr

from distillkit_schemas import FEATURES, Manifest

from distillkit.config.cache import CacheConfig
from distillkit.features.pipeline import Plan, cache_shards, plan_samples, prepare_store
from distillkit.store import layout
from distillkit.store.finalize import (REPAIR_ATTR, finalize_store, merge_statistics, rewrite_summary,
                                       write_sample_index)
from distillkit.store.integrity import deep_check, delete_shard_object
from distillkit.store.lease import Lease
from distillkit.store.target import NotAStore, inspect_target

log = logging.getLogger("distillkit")


def repair_store(cfg: CacheConfig, show_progress: bool = True) -> dict:
    """Verify every checksum; recompute exactly the damaged shards (and the merged statistics). The teachers and the
    plan must match the store, as for any re-run; undamaged shards are not touched."""
    if inspect_target(cfg.store, FEATURES, cfg.storage_options) != "existing":
        raise NotAStore(f"{cfg.store} is not a feature store (nothing to repair): run `distillkit cache` first")
    with Lease(cfg.store, cfg.storage_options):
        return _repair(cfg, show_progress)


def _repair(cfg: CacheConfig, show_progress: bool) -> dict:
    t0 = time.perf_counter()
    damage, _ = deep_check(layout.open_group(cfg.store, "r", cfg.storage_options, consolidated=False))
    shards = sorted({d.shard for d in damage if d.shard >= 0})
    group = layout.open_group(cfg.store, "r+", cfg.storage_options)
    if shards:  # first what the plan and the shard table need to be readable again
        for d in damage:
            if d.shard >= 0:
                delete_shard_object(group[d.array], d.shard)
        manifest = Manifest.model_validate(group.attrs[layout.MANIFEST_ATTR])
        _rewrite_sample_table(group, plan_samples(cfg), shards, manifest)
        group.attrs[REPAIR_ATTR] = shards  # a complete store with shards not done: re-runs read every mark
        group["progress/shard_done"][shards] = 0
    prepared = prepare_store(cfg)
    if shards:
        log.warning("store %s: recomputing damaged shard(s) %s (%s)", cfg.store, shards,
                    ", ".join(sorted({d.array for d in damage})))
        result = cache_shards(cfg, prepared, shards=shards, show_progress=show_progress)
    else:
        result = {"shards": 0, "samples": 0, "rejected": []}
    if damage:
        merge_statistics(prepared.group, prepared.manifest)
        if prepared.manifest.sample_index is not None:  # the same version's index, rewritten from samples/
            write_sample_index(prepared.group, prepared.manifest)
    if damage:
        rewrite_summary(prepared.group, prepared.manifest)
    if shards:
        group.attrs[REPAIR_ATTR] = None  # recomputed, merged and indexed: the marks are all set again
    result.update(repaired_shards=shards, damaged_arrays=sorted({d.array for d in damage}),
                  nothing_to_do=not damage, finalize=finalize_store(cfg), store=cfg.store,
                  wall_s=time.perf_counter() - t0)
    return result


def _rewrite_sample_table(group: zarr.Group, plan: Plan, shards: list[int], m: Manifest) -> None:
    """The rows written at creation (ids, uris, split, view seed) of these shards, again from the plan."""
    for s in shards:
        sl = slice(s * m.shard_size, min((s + 1) * m.shard_size, m.n_samples))
        group["samples/id"][sl] = plan.refs.ids[sl]
        group["samples/uri"][sl] = plan.refs.uris[sl]
        group["samples/split"][sl] = plan.splits[sl]
        group["samples/view_seed"][sl] = plan.seeds[sl]
