"""Add frames to an aligned scene of a scene store: pairs only for the new frames, the old poses as the start.

``add_frames(cfg, scene, new)``: ``new`` names frames of the scene's source (frame ids, file names or paths of
colour images; a folder scene picks up images added to its folder).  Steps, all checked before the store is
touched: the frames exist and are not in the scene yet, crop to the scene's size, have GT poses if the scene
has them; the new pairs are the store's graph over the enlarged frame list restricted to pairs with a new
frame; the whole graph is connected.  Then every scene array is rewritten at its new length (old data kept;
shard sizes follow the schema), inference runs for the new pairs only, and the scene is re-aligned from its
previous cameras and depths (``geometry/incremental.py``).  ``scene_done`` is 0 from the first rewrite until
the new alignment is written.
"""

from __future__ import annotations

import logging
import time
from pathlib import PurePosixPath

import numpy as np

from distillkit_schemas.scenes import SCENE_ATTR, expected_scene_arrays, read_scene_info, read_scene_manifest

from distillkit.config.scenes import SceneCacheConfig
from distillkit.geometry.checks import check_graph, check_pair_values, check_sizes
from distillkit.geometry.incremental import Previous
from distillkit.scenes import store as st
from distillkit.scenes.frames import crop_geometry, gt_intrinsics, image_hw, load_frame
from distillkit.scenes.pipeline import PATCH, _graph_edges, align_stored, network
from distillkit.scenes.sources import discover

log = logging.getLogger("distillkit")


def _find_frames(cfg: SceneCacheConfig, scene: str, new: list[str], have: list[str]):
    found = [s for s in discover(cfg.source, cfg.layout, cfg.storage_options) if s.name == scene]
    if not found:
        raise ValueError(f"scene {scene}: not found under {cfg.source}")
    src = found[0]
    keys = {}
    for f in src.frames:
        for key in (f.frame_id, f.color, PurePosixPath(str(f.color)).name, src.uri(f.color)):
            keys.setdefault(str(key), f)
    frames, missing = [], []
    for x in new:
        f = keys.get(str(x)) or keys.get(PurePosixPath(str(x)).name)
        (missing.append(x) if f is None else frames.append(f))
    if missing:
        raise ValueError(f"scene {scene}: frame(s) {missing[:5]} not found in its source {cfg.source}")
    dup = [f.frame_id for f in frames if f.frame_id in have]
    dup += [f.frame_id for k, f in enumerate(frames) if f.frame_id in {g.frame_id for g in frames[:k]}]
    if dup:
        raise ValueError(f"scene {scene}: frame(s) {sorted(set(dup))[:5]} are already in the scene")
    return src, frames


def _rewrite(group, manifest, info, new_info, fill: dict) -> None:
    """Every scene array at its new shape: old rows kept, ``fill[path]`` (rows after the old ones) written."""
    for spec in expected_scene_arrays(manifest, new_info):
        old = group[spec.path][:]
        del group[spec.path]
        st._create(group, spec)
        arr = group[spec.path]
        arr[:len(old)] = old
        if spec.path in fill:
            arr[len(old):] = fill[spec.path]
    group[f"scenes/{info.name}"].attrs[SCENE_ATTR] = new_info.model_dump(mode="json")


def add_frames(cfg: SceneCacheConfig, scene: str, new: list[str]) -> dict:
    """Add ``new`` frames to the aligned ``scene`` of ``cfg.store`` and re-align incrementally; returns a summary."""
    from distillkit.scenes.inference import infer_pairs, oracle_pairs

    t0 = time.perf_counter()
    group = st.open_store(cfg.store, "r+", cfg.storage_options)
    manifest = read_scene_manifest(group)
    idx = st.scene_index(manifest, scene)
    st.require_aligned(group, manifest, scene)
    info = read_scene_info(group, scene)
    base = f"scenes/{scene}"
    ids = [str(i) for i in group[f"{base}/frame_id"][:]]
    if not new:
        raise ValueError(f"scene {scene}: no frames to add")
    src, frames = _find_frames(cfg, scene, new, ids)
    n0, n1 = len(ids), len(ids) + len(frames)
    all_ids = ids + [f.frame_id for f in frames]
    src_hws = [image_hw(src, f) for f in frames]
    hws = [tuple(info.image_hw)] * n0 + [crop_geometry(hw, manifest.image_size, patch_size=PATCH).out_hw
                                         for hw in src_hws]
    check_sizes(hws, scene, all_ids)
    c2w = K = None
    if info.has_gt:
        bad = [f.frame_id for f in frames if f.cam2world is None or not np.isfinite(f.cam2world).all()]
        if bad:
            raise ValueError(f"scene {scene} has GT poses; new frame(s) {bad[:5]} have none")
        c2w = np.concatenate((group[f"{base}/gt_cam2world"][:], np.stack([f.cam2world for f in frames])))
        K = np.concatenate((group[f"{base}/gt_intrinsics"][:], np.stack(
            [gt_intrinsics(src, hw, manifest.image_size, PATCH) for hw in src_hws])))
    old_edges = group[f"{base}/pairs/edges"][:].astype(np.int64)
    graph_edges, _ = _graph_edges(manifest.graph, n1, manifest.symmetrize, c2w, K, tuple(info.image_hw))
    have = {tuple(e) for e in old_edges.tolist()}
    new_edges = np.array([e for e in graph_edges.tolist() if max(e) >= n0 and tuple(e) not in have],
                         np.int64).reshape(-1, 2)
    edges = np.concatenate((old_edges, new_edges))
    check_graph(edges, n1, scene, all_ids)
    if manifest.network.predictor == "gt-depth" and not info.has_gt_depth:
        raise ValueError(f"scene {scene}: the store's gt-depth predictor needs GT depth for the new frames")
    loaded = [load_frame(src, f, manifest.image_size, PATCH, with_depth=info.has_gt_depth) for f in frames]
    previous = Previous(group[f"{base}/cam2world"][:], group[f"{base}/intrinsics"][:, 0, 0], group[f"{base}/depth"][:])
    t1 = time.perf_counter()

    # the store from here on: the scene is not done until its new alignment is written
    st.set_flag(group, "scene_done", idx, 0)
    st.set_flag(group, "pairs_done", idx, 0)
    new_info = info.model_copy(update={"n_frames": n1, "n_edges": len(edges)})
    fill = {f"{base}/frame_id": np.array([f.frame_id for f in frames], dtype=object).astype(str),
            f"{base}/uri": np.array([src.uri(f.color) for f in frames], dtype=object).astype(str),
            f"{base}/split": np.array([f.split for f in frames], np.uint8),
            f"{base}/image": np.stack([f.image for f in loaded]), f"{base}/pairs/edges": new_edges.astype(np.int32)}
    if info.has_gt:
        fill[f"{base}/gt_cam2world"], fill[f"{base}/gt_intrinsics"] = c2w[n0:], K[n0:]
    if info.has_gt_depth:
        fill[f"{base}/gt_depth"] = np.stack([f.depth for f in loaded]).astype(np.float32)
    _rewrite(group, manifest, info, new_info, fill)
    images = group[f"{base}/image"][:]
    if manifest.network.predictor == "gt-depth":
        batches = oracle_pairs(group[f"{base}/gt_depth"][:], K, c2w, new_edges, cfg.batch_size)
    else:
        batches = infer_pairs(network(cfg)[0], images, new_edges, cfg.batch_size, cfg.network.dtype)
    E0 = len(old_edges)
    for start, stop, batch in batches:
        for e in range(start, stop):
            check_pair_values(tuple(new_edges[e]), *(batch[k][e - start] for k in st.PAIR_KEYS), scene, all_ids,
                              E0 + e)
        for k in st.PAIR_KEYS:
            group[f"{base}/pairs/{k}"][E0 + start:E0 + stop] = batch[k]
    st.set_flag(group, "pairs_done", idx, 1)
    t2 = time.perf_counter()
    result, record = align_stored(group, manifest, scene, cfg.align, {"add_frames_s": t1 - t0,
                                                                      "inference_s": t2 - t1}, previous=previous)
    if manifest.status == "complete":
        st.consolidate(group)
    log.info("scene %s: %d frame(s) added (%d new pairs), loss %.6g", scene, len(frames), len(new_edges),
             record.loss)
    return {"scene": scene, "added": [f.frame_id for f in frames], "n_frames": n1, "n_edges": len(edges),
            "new_edges": len(new_edges), "loss": record.loss, "iterations": record.iterations,
            "align_s": record.timings["align_s"], "total_s": time.perf_counter() - t0}


def add_config(store: str, config_file=None, storage_options: dict | None = None) -> SceneCacheConfig:
    """The settings to add frames with: the YAML used for the store (``config_file``), else the store's own
    manifest (source, layout, size, graph, predictor; a network predictor needs its checkpoint there)."""
    from distillkit.config.common import load_config

    if config_file is not None:
        return load_config(SceneCacheConfig, config_file, store=store)
    m = read_scene_manifest(st.open_store(store, "r", storage_options))
    net = m.network
    if net.predictor == "network" and net.checkpoint.startswith("random-init:"):
        raise ValueError(f"{store}: its pairs come from a random-init network; pass --config with the settings "
                         f"used to create it (the network is rebuilt from them)")
    return SceneCacheConfig(source=m.source, store=store, layout=m.layout, image_size=m.image_size, graph=m.graph,
                            symmetrize=m.symmetrize, frames_per_shard=m.frames_per_shard, predictor=net.predictor,
                            network={"checkpoint": net.checkpoint} if net.predictor == "network" else {},
                            align=m.align, storage_options=storage_options or {})
