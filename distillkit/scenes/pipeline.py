"""The scene pipeline: plan and create the store once, then per scene: frames -> pairs -> inference -> alignment.

Every step is a plain function (the `align-scenes` flow and `distillkit align` are thin wrappers):

* :func:`prepare` discovers the scenes, selects frames, reads image headers (crop size, GT intrinsics), builds
  each pair graph and creates the store (or checks that an existing one was made with the same settings);
* :func:`run_scene` does one scene end to end, resumable at two points (pairs stored / scene aligned);
* :func:`align_stored` (re-)aligns a scene from its stored pair outputs only — no network;
* :func:`finalize` marks the store complete once every scene is done.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distillkit_schemas import MANIFEST_ATTR, SCENES, SceneAlignment, SceneInfo, SceneManifest
from distillkit_schemas.scenes import read_alignment, read_scene_info, read_scene_manifest

from distillkit import __version__
from distillkit.config.scenes import SceneAlignSettings, SceneCacheConfig
from distillkit.devices import resolve_device
from distillkit.geometry import AlignConfig, AlignResult, align, make_pairs, pairs_by_overlap
from distillkit.geometry.checks import check_graph, check_pair_values, check_sizes
from distillkit.progress import Progress
from distillkit.store.target import inspect_target
from distillkit.scenes import store as st
from distillkit.scenes.frames import crop_geometry, frame_problem, gt_intrinsics, image_hw, load_frame
from distillkit.scenes.quality import alignment_residuals, gt_metrics
from distillkit.scenes.sources import SceneSource, discover, fingerprint_parts, select_frames

log = logging.getLogger("distillkit")

FALLBACK_GRAPH = "swin-3-noncyclic"
PATCH = 16
_NETWORKS: dict[tuple, Any] = {}  # loaded once per process, reused by every scene task
_NETWORK_LOCK = threading.Lock()


@dataclass
class Prepared:
    manifest: SceneManifest
    sources: dict[str, SceneSource]
    pending: list[str]  # scenes not yet done, in store order
    done: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- planning
def _graph_edges(graph: str, n: int, symmetrize: bool, c2w, K, hw) -> tuple[np.ndarray, str]:
    if graph.startswith("overlap"):
        if c2w is None:
            log.warning("graph %s needs GT poses; this scene has none: using %s", graph, FALLBACK_GRAPH)
            return make_pairs(n, FALLBACK_GRAPH, symmetrize=symmetrize), FALLBACK_GRAPH
        parts = graph.split("-")
        k = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 4
        return pairs_by_overlap(c2w, K, hw[0], hw[1], k=k, symmetrize=symmetrize), graph
    return make_pairs(n, graph, symmetrize=symmetrize), graph


def plan_scene(scene: SceneSource, cfg: SceneCacheConfig) -> tuple[SceneSource, st.SceneTables] | None:
    """Frame selection, one crop size per scene (odd-sized frames dropped), GT intrinsics, the pair graph."""
    scene = select_frames(scene, cfg.splits, cfg.frame_stride, cfg.max_frames)
    problems = {f.frame_id: frame_problem(scene, f) for f in scene.frames}
    for fid, why in problems.items():
        if why:
            log.warning("skipping frame %s: %s", fid, why)
    scene.frames = [f for f in scene.frames if not problems[f.frame_id]]
    src_hws = [image_hw(scene, f) for f in scene.frames]
    out_hws = [crop_geometry(hw, cfg.image_size, patch_size=PATCH).out_hw for hw in src_hws]
    if not out_hws:
        log.warning("scene %s: no frames selected; skipped", scene.name)
        return None
    ids = [f.frame_id for f in scene.frames]
    if cfg.mixed_sizes == "error":  # before anything is written
        check_sizes(out_hws, scene.name, ids)
    size, _ = Counter(out_hws).most_common(1)[0]
    keep = [i for i, hw in enumerate(out_hws) if hw == size]
    skipped_size = len(out_hws) - len(keep)
    if skipped_size:
        log.warning("scene %s: %d frame(s) crop to another size than %s and are skipped (DUSt3R aligns one size)",
                    scene.name, skipped_size, size)
    scene.frames = [scene.frames[i] for i in keep]
    n = len(scene.frames)
    if n < 2:
        check_graph(np.zeros((0, 2), np.int64), n, scene.name, [f.frame_id for f in scene.frames])
    c2w = np.stack([f.cam2world for f in scene.frames]) if scene.has_gt else None
    K = None
    if scene.has_gt and scene.color_K is not None:
        K = np.stack([gt_intrinsics(scene, src_hws[i], cfg.image_size, PATCH) for i in keep])
    has_gt = c2w is not None and K is not None
    edges, graph = _graph_edges(cfg.graph, n, cfg.symmetrize, c2w if has_gt else None, K, size)
    check_graph(edges, n, scene.name, [f.frame_id for f in scene.frames])
    info = SceneInfo(name=scene.name, layout=scene.layout, root=scene.uri(scene.root), n_frames=n,
                     n_edges=len(edges), image_hw=size, has_gt=has_gt, has_gt_depth=has_gt and scene.has_gt_depth,
                     n_skipped_invalid=scene.n_invalid, n_skipped_size=skipped_size,
                     notes="; ".join(x for x in (scene.notes, f"graph {graph}") if x))
    tables = st.SceneTables(info, [f.frame_id for f in scene.frames], [scene.uri(f.color) for f in scene.frames],
                            np.array([f.split for f in scene.frames], np.uint8), edges,
                            c2w if has_gt else None, K if has_gt else None)
    return scene, tables


def network(cfg: SceneCacheConfig):
    """(model, provenance), loaded once per process; (None, oracle provenance) for the gt-depth predictor."""
    from distillkit.scenes.inference import build_network, oracle_provenance

    if cfg.predictor == "gt-depth":
        return None, oracle_provenance()
    n = cfg.network
    if n.checkpoint and n.overrides:
        raise ValueError("network.overrides apply to a random init only; the checkpoint defines the architecture")
    device = resolve_device(cfg.device)
    key = (n.checkpoint, n.seed, n.base, repr(sorted(n.overrides.items())), repr(sorted(n.head_overrides.items())),
           str(device), n.dtype, repr(sorted(cfg.storage_options.items())))
    with _NETWORK_LOCK:  # scene tasks on threads: build once (a seeded random init must not interleave)
        if key not in _NETWORKS:
            _NETWORKS.clear()  # one network per process
            _NETWORKS[key] = build_network(n.checkpoint, n.seed, n.base, n.overrides, n.head_overrides, device,
                                           n.dtype, cfg.storage_options)
        return _NETWORKS[key]


def _fingerprint(sources: list[SceneSource]) -> str:
    h = hashlib.sha256()
    for s in sources:
        for part in fingerprint_parts(s):
            h.update(part.encode())
            h.update(b"\0")
    return h.hexdigest()


def prepare(cfg: SceneCacheConfig) -> Prepared:
    """Plan every scene and create the store once (or check the existing one). Cheap: reads headers only."""
    state = inspect_target(cfg.store, SCENES, cfg.storage_options)  # refuse a foreign target before any work
    found = discover(cfg.source, cfg.layout, cfg.storage_options)
    if cfg.scenes is not None:
        names = {s.name for s in found}
        missing = sorted(set(cfg.scenes) - names)
        if missing:
            raise ValueError(f"scene(s) {missing} not found under {cfg.source} (found: {sorted(names)})")
        found = [s for s in found if s.name in cfg.scenes]
    planned = [p for p in (plan_scene(s, cfg) for s in found) if p is not None]
    if not planned:
        raise ValueError(f"no usable scene under {cfg.source}")
    sources = {s.name: s for s, _ in planned}
    tables = [t for _, t in planned]
    _, prov = network(cfg)
    manifest = SceneManifest(distillkit_version=__version__, source=cfg.source,
                             source_fingerprint=_fingerprint(list(sources.values())), layout=cfg.layout,
                             scenes=[t.info.name for t in tables], image_size=cfg.image_size, graph=cfg.graph,
                             symmetrize=cfg.symmetrize, frames_per_shard=cfg.frames_per_shard, network=prov,
                             align=cfg.align.model_dump(mode="json"))
    if state != "existing":
        group = st.create_store(cfg.store, manifest, tables, cfg.storage_options)
        log.info("scene store %s created: %d scene(s)", cfg.store, len(tables))
    else:
        group = st.open_store(cfg.store, "r+", cfg.storage_options)
        have = st.check_compatible(group, manifest, cfg.store)
        if have.align != manifest.align:
            log.warning("scene store %s was aligned with %s; scenes still to do use %s (re-align the others with "
                        "`distillkit align`)", cfg.store, have.align, manifest.align)
        manifest = have
    _, scene_done = st.done_flags(group)
    pending = [s for s, d in zip(manifest.scenes, scene_done) if not d]
    return Prepared(manifest, sources, pending, [s for s, d in zip(manifest.scenes, scene_done) if d])


# ---------------------------------------------------------------------------------------------- alignment
def align_config(settings: SceneAlignSettings, gt: dict) -> tuple[AlignConfig, bool, bool]:
    """The aligner's settings; GT poses / intrinsics only where the scene has them."""
    use_poses = settings.known_poses and gt["cam2world"] is not None
    use_K = settings.known_intrinsics and gt["intrinsics"] is not None
    cfg = AlignConfig(min_conf_thr=settings.min_conf_thr, pose_pixels=settings.pose_pixels,
                      max_iters=settings.max_iters, tol=settings.tol, fine_iters=settings.fine_iters)
    if use_poses:
        cfg.known_cam2world = np.asarray(gt["cam2world"], np.float64)
    if use_K:
        K = np.asarray(gt["intrinsics"], np.float64)
        cfg.known_focals = (K[:, 0, 0] + K[:, 1, 1]) / 2  # the aligner has one focal per image (fx = fy)
        cfg.principal_point = (float(K[:, 0, 2].mean()), float(K[:, 1, 2].mean()))  # and one for the scene
    return cfg, use_poses, use_K


@contextlib.contextmanager
def _torch_threads(n: int | None):
    """The aligner's matrix products go through torch: pin its intra-op threads while it runs."""
    import torch

    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def align_stored(group, manifest: SceneManifest, scene: str, settings: SceneAlignSettings,
                 extra_timings: dict | None = None, previous=None) -> tuple[AlignResult, SceneAlignment]:
    """Align one scene from its stored pair outputs (no network) and write it; ``scene_done`` is managed here
    (cleared before the rewrite, set after everything else, its record included).  ``previous``: a
    ``geometry.incremental.Previous`` of the scene's first frames to start from (frames added to it)."""
    idx = st.scene_index(manifest, scene)
    pairs_done, _ = st.done_flags(group)
    if not pairs_done[idx]:
        raise ValueError(f"scene {scene}: pair outputs are not stored yet (run the align-scenes flow first)")
    t0 = time.perf_counter()
    preds = st.read_pairs(group, scene)
    gt = st.read_scene_gt(group, scene)
    acfg, use_poses, use_K = align_config(settings, gt)
    acfg.scene, acfg.frame_ids = scene, [str(i) for i in group[f"scenes/{scene}/frame_id"][:]]
    acfg.previous = previous
    t1 = time.perf_counter()
    # far-off pointmaps (a random-init network) overflow harmlessly in the solver: checked for finiteness below
    with _torch_threads(settings.threads), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        result = align(preds, acfg)
    t2 = time.perf_counter()
    bad = int((~np.isfinite(result.pts3d)).any(-1).sum())
    if bad or not np.isfinite(result.cam2world).all():
        raise ValueError(f"scene {scene}: the alignment diverged ({bad} non-finite points); nothing was written")
    previous = read_alignment(group, scene)
    record = SceneAlignment(settings=settings.model_dump(mode="json"), used_known_poses=use_poses,
                            used_known_intrinsics=use_K, loss=float(result.loss), iterations=int(result.iterations),
                            residuals=alignment_residuals(result), gt_metrics=gt_metrics(result, gt, use_poses),
                            timings={**(extra_timings or {}), "read_pairs_s": t1 - t0, "align_s": t2 - t1,
                                     **{f"align_{k}": float(v) for k, v in result.timings.items()}},
                            runs=1 if previous is None else previous.runs + 1)
    st.set_flag(group, "scene_done", idx, 0)  # a crash while rewriting must not leave a scene marked done
    st.write_alignment(group, scene, result, record)
    t3 = time.perf_counter()
    record.timings["write_s"] = t3 - t2
    record.timings["total_s"] = sum(record.timings.get(k, 0.0) for k in ("load_s", "inference_s")) + t3 - t0
    group[f"scenes/{scene}"].attrs[st.ALIGNMENT_ATTR] = record.model_dump(mode="json")
    st.set_flag(group, "scene_done", idx, 1)
    return result, record


# ---------------------------------------------------------------------------------------------- one scene
def scene_source(cfg: SceneCacheConfig, scene: str, frame_ids: list[str]) -> SceneSource:
    """The source of one stored scene, its frames in the store's order (the store's frame table is the authority)."""
    found = [s for s in discover(cfg.source, cfg.layout, cfg.storage_options) if s.name == scene]
    if not found:
        raise ValueError(f"scene {scene} is in the store but no longer under {cfg.source}")
    src = found[0]
    by_id = {f.frame_id: f for f in src.frames}
    missing = [i for i in frame_ids if i not in by_id]
    if missing:
        raise ValueError(f"scene {scene}: {len(missing)} stored frame(s) are gone from the source, e.g. {missing[0]}")
    src.frames = [by_id[i] for i in frame_ids]
    return src


def run_scene(cfg: SceneCacheConfig, scene: str, source: SceneSource | None = None) -> dict:
    """Frames -> pair inference (skipped if already stored) -> alignment -> store. Returns timings.
    The store must exist (:func:`prepare`); ``source`` is found again from ``cfg.source`` when not given."""
    from distillkit.scenes.inference import infer_pairs, oracle_pairs

    group = st.open_store(cfg.store, "r+", cfg.storage_options)
    manifest = read_scene_manifest(group)
    idx = st.scene_index(manifest, scene)
    pairs_done, scene_done = st.done_flags(group)
    if scene_done[idx]:
        return {"scene": scene, "skipped": True}
    info = read_scene_info(group, scene)
    ids = [str(i) for i in group[f"scenes/{scene}/frame_id"][:]]
    if source is None or [f.frame_id for f in source.frames] != ids:
        source = scene_source(cfg, scene, ids) if source is None else _reordered(source, ids)
    src = source
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if not pairs_done[idx]:
        frames = [load_frame(src, f, manifest.image_size, PATCH, with_depth=info.has_gt_depth) for f in src.frames]
        images = np.stack([f.image for f in frames])
        gt_depth = np.stack([f.depth for f in frames]) if info.has_gt_depth else None
        st.write_frames(group, scene, images, gt_depth)
        t1 = time.perf_counter()
        edges = group[f"scenes/{scene}/pairs/edges"][:]
        if cfg.predictor == "gt-depth":
            gt = st.read_scene_gt(group, scene)
            if gt["depth"] is None:
                raise ValueError(f"scene {scene}: predictor gt-depth needs GT poses, intrinsics and depth")
            batches = oracle_pairs(gt["depth"], gt["intrinsics"], gt["cam2world"], edges, cfg.batch_size)
        else:
            model, _ = network(cfg)
            batches = infer_pairs(model, images, edges, cfg.batch_size, cfg.network.dtype)
        writer = st.PairWriter(group, scene)
        with Progress(len(edges), f"scene {scene}: pairs", "pair") as bar:
            for start, stop, batch in batches:
                for e in range(start, stop):  # a bad pair is an error before its batch is written
                    check_pair_values(tuple(edges[e]), *(batch[k][e - start] for k in st.PAIR_KEYS), scene, ids, e)
                writer.add(start, stop, batch)
                bar.advance(stop - start)
        writer.close()
        st.set_flag(group, "pairs_done", idx, 1)
        timings.update(load_s=t1 - t0, inference_s=time.perf_counter() - t1)
    else:
        log.info("scene %s: pair outputs already stored; aligning only", scene)
    log.info("scene %s: aligning %d frames from %d pairs", scene, info.n_frames, info.n_edges)
    _, record = align_stored(group, manifest, scene, cfg.align, timings)
    timings = {k: record.timings[k] for k in ("load_s", "inference_s", "read_pairs_s", "align_s", "write_s",
                                              "total_s") if k in record.timings}
    log.info("scene %s: %d frames, %d pairs, loss %.4g, %.1f s", scene, info.n_frames, info.n_edges, record.loss,
             timings["total_s"])
    return {"scene": scene, "skipped": False, "n_frames": info.n_frames, "n_edges": info.n_edges,
            "loss": record.loss, "timings": timings, "gt_metrics": record.gt_metrics}


def _reordered(src: SceneSource, ids: list[str]) -> SceneSource:
    by_id = {f.frame_id: f for f in src.frames}
    src.frames = [by_id[i] for i in ids]
    return src


def finalize(cfg_or_url: SceneCacheConfig | str, storage_options: dict | None = None) -> dict:
    """Mark the store complete once every scene is done (idempotent); consolidate the metadata."""
    url = cfg_or_url if isinstance(cfg_or_url, str) else cfg_or_url.store
    so = storage_options if isinstance(cfg_or_url, str) else cfg_or_url.storage_options
    group = st.open_store(url, "r+", so)
    manifest = read_scene_manifest(group)
    _, done = st.done_flags(group)
    if not done.all():
        missing = [s for s, d in zip(manifest.scenes, done) if not d]
        return {"status": "in_progress", "missing_scenes": missing}
    if manifest.status != "complete":
        from distillkit_schemas.v1 import utcnow

        manifest.status, manifest.finished = "complete", utcnow()
        manifest.version += 1
        group.attrs[MANIFEST_ATTR] = manifest.model_dump(mode="json")
    st.consolidate(group)
    return {"status": "complete", "scenes": manifest.scenes, "version": manifest.version}


def run_scenes(cfg: SceneCacheConfig) -> dict:
    """Everything, serially in this process (what the flow does with one task per scene)."""
    t0 = time.perf_counter()
    prepared = prepare(cfg)
    results = [run_scene(cfg, s, prepared.sources[s]) for s in prepared.pending]
    return {"store": cfg.store, "scenes": results, "nothing_to_do": not prepared.pending,
            "finalize": finalize(cfg), "wall_s": time.perf_counter() - t0}


def realign(url: str, scene: str | None = None, overrides: dict | None = None,
            storage_options: dict | None = None) -> list[dict]:
    """Re-run the alignment of one or all scenes from the stored pairs, with the store's settings plus
    ``overrides`` (SceneAlignSettings fields). No network is loaded."""
    group = st.open_store(url, "r+", storage_options)
    manifest = read_scene_manifest(group)
    settings = SceneAlignSettings.model_validate({**manifest.align, **(overrides or {})})
    pairs_done, _ = st.done_flags(group)
    names = [scene] if scene else [s for s, d in zip(manifest.scenes, pairs_done) if d]
    out = []
    for name in names:
        res, rec = align_stored(group, manifest, name, settings)
        out.append({"scene": name, "loss": rec.loss, "iterations": rec.iterations, "runs": rec.runs,
                    "used_known_poses": rec.used_known_poses, "gt_metrics": rec.gt_metrics,
                    "align_s": rec.timings["align_s"]})
    if manifest.status == "complete":
        st.consolidate(group)
    return out
