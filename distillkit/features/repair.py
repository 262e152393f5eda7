"""`distillkit cache --repair`: verify every checksum, recompute exactly the damaged shards."""

from __future__ import annotations

import logging
import time

import numpy as np
import zarr

from distillkit_schemas import FEATURES, Manifest

from distillkit.config.cache import CacheConfig
from distillkit.features.pipeline import cache_shards, plan_samples, prepare_store
from distillkit.store import growth, layout
from distillkit.store.finalize import (REPAIR_ATTR, finalize_store, merge_statistics, rewrite_summary,
                                       write_sample_index)
from distillkit.store.ids import sorted_matches, str_column
from distillkit.store.integrity import Damage, deep_check, delete_shard_object
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
        _rewrite_sample_table(group, cfg, damage, manifest)
        retired = _retired_rows(group, manifest, shards, damage)
        group.attrs[REPAIR_ATTR] = shards  # a complete store with shards not done: re-runs read every mark
        group["progress/shard_done"][shards] = 0
    prepared = prepare_store(cfg)
    if shards:
        log.warning("store %s: recomputing damaged shard(s) %s (%s)", cfg.store, shards,
                    ", ".join(sorted({d.array for d in damage})))
        result = cache_shards(cfg, prepared, shards=shards, show_progress=show_progress)
        provs = {n: t.provenance for n, t in prepared.teachers.items()}
        for reason in sorted(set(retired.values())):  # caching made every decodable row valid: retire them again
            growth.prune(group, prepared.manifest, provs, [r for r, why in retired.items() if why == reason], reason)
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


CREATION_COLUMNS = ("id", "uri", "signature", "split", "view_seed")  # written when a row is made, not by caching


def _rewrite_sample_table(group: zarr.Group, cfg: CacheConfig, damage: list[Damage], m: Manifest) -> None:
    """The damaged columns of the rows' creation-time values, written again: ids from the served version's sample
    index, the rest from the listing (planned only when such a column is damaged) matched by id. Never
    by position: once a store has grown, a row's number is not its place in the listing (new ids sort between old
    ones, and padding sits between versions)."""
    hit: dict[int, set[str]] = {}
    for d in damage:
        column = d.array.removeprefix("samples/")
        if d.shard >= 0 and d.array.startswith("samples/") and column in CREATION_COLUMNS:
            hit.setdefault(d.shard, set()).add(column)
    if not hit:
        return
    plan, url = plan_samples(cfg), cfg.store
    for s, columns in sorted(hit.items()):
        sl = slice(s * m.shard_size, min((s + 1) * m.shard_size, m.n_samples))
        ids = str_column(_index_ids(group, m, s, sl, url) if "id" in columns else group["samples/id"][sl])
        live = np.flatnonzero(ids != "")  # padding rows have no id
        rows, at = sorted_matches(ids[live], plan.refs.ids)
        rows, found = live[rows], np.zeros(len(ids), bool)
        found[rows] = True
        gone = ids[~found & (ids != "")].tolist()
        if gone:
            log.warning("store %s: shard %d: %d sample(s) no longer in the source, e.g. %s: recached as rejected",
                        url, s, len(gone), gone[0])
        values = {"id": ids, "uri": str_column([""] * len(ids)), "signature": str_column([""] * len(ids)),
                  "split": np.zeros(len(ids), np.uint8), "view_seed": np.zeros(len(ids), np.int64)}
        for column, listed in (("uri", plan.refs.uris), ("signature", plan.refs.signatures),
                               ("split", plan.splits), ("view_seed", plan.seeds)):
            values[column][rows] = listed[at]
        for column in sorted(columns):
            if f"samples/{column}" in group:
                group[f"samples/{column}"][sl] = values[column]


def _index_ids(group: zarr.Group, m: Manifest, shard: int, sl: slice, url: str) -> np.ndarray:
    if m.sample_index is None or f"{m.sample_index}/id" not in group:
        raise ValueError(f"store {url}: samples/id of shard {shard} is damaged and the store has no sample "
                         "index to recover its ids from: cache into a new --store")
    return group[f"{m.sample_index}/id"][sl]


def _retired_rows(group: zarr.Group, m: Manifest, shards: list[int], damage: list[Damage]) -> dict[int, str]:
    """Rows of the damaged shards that were retired (pruned, or replaced by a later row of the same id), with
    their reason: re-caching a shard decodes every row, so they are retired again after it. A shard whose error
    column is itself damaged falls back to what the ids show: an id that recurs at a later row was replaced."""
    unreadable = {d.shard for d in damage if d.array == "samples/error"}
    ids = str_column(group["samples/id"][:m.n_samples])
    _, latest = growth.latest_rows(ids)
    superseded = np.ones(len(ids), bool)
    superseded[latest] = False
    superseded &= ids != ""
    out = {}
    for s in shards:
        lo, hi = s * m.shard_size, min((s + 1) * m.shard_size, m.n_samples)
        errors = [""] * (hi - lo) if s in unreadable else group["samples/error"][lo:hi].tolist()
        for r, why in zip(range(lo, hi), errors):
            if str(why).startswith(growth.RETIRED):
                out[r] = str(why)
            elif superseded[r]:
                out[r] = growth.REPLACED
    return out
