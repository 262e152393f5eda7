"""Looking at a scene store: a coloured, confidence-thresholded binary PLY point cloud, and PNG views
(image, depth, confidence, pointmap as RGB) per frame plus an overview grid."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from distillkit_schemas.scenes import read_alignment, read_scene_info, read_scene_manifest

from distillkit.scenes import figures as fig
from distillkit.scenes import store as st
from distillkit.scenes.figures import box_label, pointmap_rgb, world_unit


def _scene(group, scene: str | None) -> str:
    names = read_scene_manifest(group).scenes
    if scene is None:
        if len(names) == 1:
            return names[0]
        raise ValueError(f"the store holds several scenes; pick one with --scene ({', '.join(names)})")
    st.scene_index(read_scene_manifest(group), scene)
    return scene


def default_conf_thr(group, scene: str) -> float:
    rec = read_alignment(group, scene)
    return float(rec.settings.get("min_conf_thr", 3.0)) if rec else 3.0


def write_ply(path: str | Path, xyz: np.ndarray, rgb: np.ndarray, quality: np.ndarray | None = None) -> Path:
    """Binary little-endian PLY: float x, y, z; uchar red, green, blue; float quality (MeshLab's per-vertex scalar)."""
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
    if quality is not None:
        fields.append(("quality", "<f4"))
    v = np.empty(len(xyz), dtype=fields)
    v["x"], v["y"], v["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    v["red"], v["green"], v["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    if quality is not None:
        v["quality"] = quality
    props = "".join(f"property {'float' if t.endswith('f4') else 'uchar'} {n}\n" for n, t in fields)
    header = ("ply\nformat binary_little_endian 1.0\ncomment distillkit scene export\n"
              f"element vertex {len(v)}\n{props}end_header\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(v.tobytes())
    return path


def export_ply(url: str, out: str | Path, scene: str | None = None, conf_thr: float | None = None,
               frames: list[int] | None = None, stride: int = 1, storage_options: dict | None = None) -> dict:
    """World points of the frames (all by default) whose confidence exceeds ``conf_thr`` (default: the scene's
    alignment threshold), every ``stride``-th pixel, coloured by the image."""
    group = st.open_store(url, "r", storage_options)
    scene = _scene(group, scene)
    st.require_aligned(group, read_scene_manifest(group), scene)
    thr = default_conf_thr(group, scene) if conf_thr is None else conf_thr
    base = f"scenes/{scene}"
    arrays = {name: group[f"{base}/{name}"] for name in ("pts3d", "conf", "image")}
    for arr in arrays.values():
        st.read_intact(arr, slice(0, 0))  # every object is there (one listing each), before the frame loop
    n = arrays["pts3d"].shape[0]
    xyz, rgb, q = [], [], []
    for k in (range(n) if frames is None else frames):
        pts, conf, img = (st.read_intact(arrays[name], k, check_objects=False)[::stride, ::stride]
                          for name in ("pts3d", "conf", "image"))
        pts, conf, img = pts.reshape(-1, 3), conf.reshape(-1), img.reshape(-1, 3)
        keep = (conf > thr) & np.isfinite(pts).all(1)
        xyz.append(pts[keep])
        rgb.append(img[keep])
        q.append(conf[keep])
    xyz, rgb, q = np.concatenate(xyz), np.concatenate(rgb), np.concatenate(q)
    path = write_ply(out, xyz.astype(np.float32), rgb.astype(np.uint8), q.astype(np.float32))
    return {"path": str(path), "points": int(len(xyz)), "conf_thr": thr, "scene": scene}


# ---------------------------------------------------------------------------------------------- PNG views
def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def show_scene(url: str, out_dir: str | Path, scene: str | None = None, n_frames: int | None = 8,
               storage_options: dict | None = None) -> dict:
    """Per frame ``<frame>_{depth,conf,pts3d}.png`` and ``overview.png`` (rows: frames; columns: image, depth,
    confidence, pointmap as RGB, and GT depth when stored)."""
    group = st.open_store(url, "r", storage_options)
    scene = _scene(group, scene)
    st.require_aligned(group, read_scene_manifest(group), scene)
    info = read_scene_info(group, scene)
    base = f"scenes/{scene}"
    n = info.n_frames
    rows = list(range(n)) if n_frames is None or n_frames >= n else \
        np.unique(np.round(np.linspace(0, n - 1, n_frames)).astype(int)).tolist()
    ids = group[f"{base}/frame_id"][:]
    pts_all = st.read_intact(group[f"{base}/pts3d"])
    conf_all = st.read_intact(group[f"{base}/conf"])
    thr = default_conf_thr(group, scene)
    sel = conf_all > thr if (conf_all > thr).any() else np.isfinite(conf_all)
    lo, hi = np.percentile(pts_all[sel], 2, axis=0), np.percentile(pts_all[sel], 98, axis=0)
    depth_all = st.read_intact(group[f"{base}/depth"])
    dvalid = np.isfinite(depth_all) & (depth_all > 0)
    dlo, dhi = np.percentile(depth_all[dvalid], [2, 98]) if dvalid.any() else (0.0, 1.0)
    gt = group[f"{base}/gt_depth"][:] if info.has_gt_depth else None
    unit = world_unit(group, scene)
    clo, chi = fig.value_range(conf_all)
    finite_conf = conf_all[np.isfinite(conf_all)]
    conf_note = " (constant: exact pairs)" if finite_conf.size and np.ptp(finite_conf) == 0 else ""
    glo, ghi = (dlo, dhi) if unit == "m" or gt is None else fig.value_range(np.where(gt > 0, gt, np.nan))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written, rows_panels, names = [], [], []
    for k in rows:
        image = st.read_intact(group[f"{base}/image"], k, check_objects=False)
        panels = {"image": fig.Panel("image", image, f"{image.shape[0]}x{image.shape[1]} px"),
                  "depth": fig.Panel("depth (aligned)", np.where(dvalid[k], depth_all[k], np.nan), f"depth ({unit})",
                                     "turbo", dlo, dhi),
                  "conf": fig.Panel(f"confidence{conf_note}", conf_all[k], "DUSt3R confidence (>= 1, unitless)",
                                    "viridis", clo, chi),
                  "pts3d": fig.Panel("pointmap, world frame", pointmap_rgb(pts_all[k], lo, hi),
                                     box_label(lo, hi, unit))}
        if gt is not None:
            panels["gt_depth"] = fig.Panel("depth (dataset)", np.where(gt[k] > 0, gt[k], np.nan),
                                           "depth (m, the dataset's)", "turbo", glo, ghi)
        stem = _safe(str(ids[k]))
        for kind, p in list(panels.items())[1:]:
            written.append(fig.save(fig.panel_figure(p, f"{scene} {ids[k]}: {p.title}"), out / f"{stem}_{kind}.png"))
        rows_panels.append(list(panels.values()))
        names.append(str(ids[k]))
    overview = fig.save(fig.grid_figure(rows_panels, names, f"{scene}: {len(rows)} of {n} frames; depth and "
                                        f"pointmap in {unit}; pointmap colours share one scene box"),
                        out / "overview.png")
    return {"overview": overview, "files": written, "scene": scene, "frames": names,
            "columns": list(panels)}
