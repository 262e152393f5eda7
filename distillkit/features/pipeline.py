"""The caching run: plan the sample table, create the store once, cache shards, finalize.

Each step is a plain function so the CLI, the Prefect flow and the tests run the same code.
"""

from __future__ import annotations

import errno
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import zarr

from distillkit_schemas import FEATURES, Manifest, paths
from distillkit_schemas.storage import parse_storage

from distillkit import __version__
from distillkit.features.calibration import fit_codecs
from distillkit.features.inputs import DecodedSample, decode_sample
from distillkit.features.shards import cache_shards  # noqa: F401  (the flow caches shard ranges)
from distillkit.config.cache import CacheConfig
from distillkit.config.common import safe_url
from distillkit.sources import Listing, content_signatures, list_source
from distillkit.sources.images import split_of
from distillkit.sources.listing import per_row
from distillkit.store.ids import row_blocks, str_column
from distillkit.store import growth, layout
from distillkit.store.codecs import Codec, read_codec
from distillkit.store.finalize import REPAIR_ATTR, finalize_store
from distillkit.store.lease import Lease
from distillkit.store.target import inspect_target
from distillkit.store.writer import StoreFull, remove_metadata_debris
from distillkit.teachers import Teacher, load_teacher
from distillkit.sources.views import view_seed

log = logging.getLogger("distillkit")


@dataclass
class Plan:
    refs: Listing  # one row per sample (K per image with K views)
    splits: np.ndarray
    fingerprint: str
    seeds: np.ndarray  # view seed per sample


@dataclass
class Prepared:
    group: zarr.Group
    manifest: Manifest
    pending: list[int]
    teachers: dict[str, Teacher]
    changes: growth.Changes | None = None  # what a re-run found new or gone in the source
    codecs: dict[str, Codec] = field(default_factory=dict)  # per teacher: how patch tokens are stored


def plan_samples(cfg: CacheConfig) -> Plan:
    """The sample table. With K views, image `a.jpg` becomes samples `a.jpg#0` … `a.jpg#K-1` (adjacent rows);
    the split is drawn per image, so no image has views on both sides."""
    t0 = time.perf_counter()
    images = list_source(cfg.source, cfg.storage_options)
    log.info("source %s: %d images listed in %.1f s", safe_url(cfg.source), len(images), time.perf_counter() - t0)
    if cfg.rehash:
        images = content_signatures(images, cfg.storage_options, cfg.num_workers)
    k = cfg.views
    splits = per_row(images.ids, lambda i: split_of(i, cfg.val_fraction), np.uint8)
    seeds = np.stack([per_row(images.ids, lambda i: view_seed(cfg.view_seed, i, v), np.int64) for v in range(k)], 1)
    refs = images
    if k > 1:  # rows taken by index: numpy 2.1's np.repeat corrupts StringDType values over 15 bytes
        ids = np.concatenate([str_column([f"{i}#{v}" for i in images.ids[sl].tolist() for v in range(k)])
                              for sl in row_blocks(len(images))])
        each = np.repeat(np.arange(len(images)), k)
        refs = Listing(ids, images.uris[each], images.signatures[each])
    return Plan(refs=refs, splits=np.repeat(splits, k), fingerprint=refs.fingerprint(), seeds=seeds.reshape(-1))


def load_teachers(cfg: CacheConfig) -> dict[str, Teacher]:
    out = {}
    for t in cfg.teachers:
        teacher = load_teacher(t, cfg.image_size, cfg.student_patch, cfg.device, cfg.storage_options)
        teacher.provenance.distillkit_version = __version__
        parse_storage(t.storage, teacher.provenance.embed_dim)  # K no larger than the teacher's width
        teacher.provenance.storage = t.storage
        out[t.name] = teacher
    return out


def build_manifest(cfg: CacheConfig, plan: Plan) -> Manifest:
    return Manifest(
        distillkit_version=__version__, source=safe_url(cfg.source), source_fingerprint=plan.fingerprint,
        n_samples=len(plan.refs), shard_size=cfg.shard_size, image_hw=cfg.image_size,
        student_patch=cfg.student_patch, val_fraction=cfg.val_fraction, teachers=[t.name for t in cfg.teachers],
        views=cfg.views, view_mode=cfg.view_mode, signatures=True,
    )


def prepare_store(cfg: CacheConfig, teachers: dict[str, Teacher] | None = None) -> Prepared:
    """Plan, then create the store (first run) or check that it matches (later runs). Returns the pending shards.
    `teachers`: already loaded (the bench's stand-ins); default: those of `cfg`."""
    plan = plan_samples(cfg)
    teachers = load_teachers(cfg) if teachers is None else teachers
    provs = {n: t.provenance for n, t in teachers.items()}
    want = build_manifest(cfg, plan)
    changes = None
    if inspect_target(cfg.store, FEATURES, cfg.storage_options) == "existing":
        group = layout.open_group(cfg.store, "r+", cfg.storage_options)
        if cfg.shards is None:  # a whole-store run holds the lease: no other process writes metadata now
            remove_metadata_debris(group)
        manifest = layout.check_compatible(group, want, provs, cfg.store)
        manifest, changes = _grow(group, manifest, provs, plan, cfg)
    else:  # nothing there, or our own interrupted creation (anything else was refused above)
        codecs = fit_codecs(cfg, plan, teachers, _plan_decoder(cfg, plan, teachers))
        log.info("creating store %s: %d samples, %d shards of %d, teachers %s", cfg.store, want.n_samples,
                 want.n_shards, cfg.shard_size, ", ".join(want.teachers))
        extra = {paths.codec(n, k): v for n, c in codecs.items() for k, v in c.arrays().items()}
        group = layout.create_store(cfg.store, want, provs, plan.refs.ids, plan.refs.uris, plan.splits, cfg.codec,
                                    cfg.storage_options, view_seeds=plan.seeds, codec_arrays=extra,
                                    signatures=plan.refs.signatures)
        manifest = want
    wanted = range(manifest.n_shards) if cfg.shards is None else cfg.shards
    bad = [s for s in wanted if not 0 <= s < manifest.n_shards]
    if bad:
        raise ValueError(f"shards {bad} out of range: the store has {manifest.n_shards} shards")
    first = _done_before(group)
    done = group["progress/shard_done"][first:]  # a complete version's shards are done: not read again
    pending = [s for s in wanted if s >= first and not done[s - first]]
    codecs = {n: read_codec(group, n, t.provenance.storage) for n, t in teachers.items()}
    return Prepared(group=group, manifest=manifest, pending=pending, teachers=teachers, changes=changes,
                    codecs=codecs)


def _done_before(group: zarr.Group) -> int:
    """The shards known done without reading their marks: those of the served version when it is complete (an
    append only adds shards after them; a repair in progress resets some: then none)."""
    served = Manifest.model_validate(group.attrs[layout.MANIFEST_ATTR])
    if served.status != "complete" or group.attrs.get(REPAIR_ATTR):
        return 0
    return served.n_shards


def _plan_decoder(cfg: CacheConfig, plan: Plan, teachers: dict[str, Teacher]) -> Callable[[int], "DecodedSample"]:
    hws = {tuple(t.input_hw) for t in teachers.values()}
    return lambda r: decode_sample(str(plan.refs.uris[r]), cfg.image_size, hws, cfg.storage_options, cfg.view_mode,
                                   int(plan.seeds[r]))


def _grow(group: zarr.Group, have: Manifest, provs: dict, plan: Plan, cfg: CacheConfig):
    """A re-run over a source that changed: append what is new (and prune what left, if asked)."""
    if growth.pending_intent(group) is None and have.source_fingerprint == plan.fingerprint:
        return have, None
    n0 = have.n_samples
    changes = growth.diff_from_index(group, have, plan.refs)
    if changes is None:  # a store without index digests: every row's id, uri and signature
        ids = group["samples/id"][:n0]
        live = ~growth.is_padding(ids) & ~growth.is_retired(group["samples/error"][:n0])
        changes = growth.diff(ids, group["samples/uri"][:n0], plan.refs.ids.tolist(), plan.refs.uris.tolist(),
                              group["samples/signature"][:n0] if have.signatures else None,
                              plan.refs.signatures.tolist(), live)
    if changes.changed:
        log.warning("store %s: %d file(s) changed since they were cached, e.g. %s: caching them again (their old "
                    "rows are retired)", cfg.store, len(changes.changed), changes.changed[0])
    if changes.removed:
        log.warning("store %s: %d sample(s) no longer in the source, e.g. %s: %s", cfg.store, len(changes.removed),
                    changes.removed[0], "marking them invalid (--prune)" if cfg.prune else
                    "kept (--prune marks them invalid)")
    prune_rows: list[int] = []
    if cfg.prune and changes.removed:
        gone, ids, valid = set(changes.removed), group["samples/id"][:n0], group["samples/valid"][:n0]
        prune_rows = [r for r, i in enumerate(ids.tolist()) if i in gone and valid[r]]
    if not changes.added and not prune_rows:
        return have, changes
    log.info("store %s: appending %d sample(s) as version %d", cfg.store, len(changes.added), have.version + 1)
    add = np.asarray(changes.added, np.intp)
    new = plan.refs[add]
    manifest = growth.begin(group, have, provs, plan.fingerprint, new.ids, new.uris, plan.splits[add],
                            plan.seeds[add], prune_rows, new.signatures, changes.replaced_rows)
    return manifest, changes


def run_cache(cfg: CacheConfig, show_progress: bool = True, on_shard=None,
              teachers: dict[str, Teacher] | None = None) -> dict:
    """Everything `distillkit cache` does: prepare, cache pending shards, finalize — holding the store's lease
    (a second run on the same store refuses, naming this one). With `shards` (scale-out over several machines)
    the lease covers only creating or growing the store; the shards themselves are disjoint."""
    inspect_target(cfg.store, FEATURES, cfg.storage_options)  # refuse a foreign target before even the lease
    if cfg.shards is not None:
        with Lease(cfg.store, cfg.storage_options):
            prepare_store(cfg, teachers)
        return _run_cache(cfg, show_progress, on_shard, teachers)
    with Lease(cfg.store, cfg.storage_options):
        return _run_cache(cfg, show_progress, on_shard, teachers)


def _run_cache(cfg: CacheConfig, show_progress: bool, on_shard, teachers) -> dict:
    try:
        return _cache_all(cfg, show_progress, on_shard, teachers)
    except OSError as e:  # creating or finalizing on a full device: nothing half-written is ever served
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StoreFull(f"no space left on the device of store {cfg.store} ({e}); every completed shard is "
                            "intact. Free space and run the same command again.") from e
        raise


def _cache_all(cfg: CacheConfig, show_progress: bool, on_shard, teachers) -> dict:
    t0 = time.perf_counter()
    prepared = prepare_store(cfg, teachers)
    if not prepared.pending:
        log.info("store %s: all %d requested shards are already done; nothing to do", cfg.store,
                 prepared.manifest.n_shards if cfg.shards is None else len(cfg.shards))
        result = {"shards": 0, "samples": 0, "rejected": [], "nothing_to_do": True}
    else:
        result = cache_shards(cfg, prepared, on_shard=on_shard, show_progress=show_progress)
        result["nothing_to_do"] = False
    result["finalize"] = finalize_store(cfg)
    result["nothing_to_do"] = result["nothing_to_do"] and not result["finalize"].get("changed", False)
    result["changes"] = prepared.changes.as_dict() if prepared.changes else None
    result["store"] = cfg.store
    result["wall_s"] = time.perf_counter() - t0
    return result
