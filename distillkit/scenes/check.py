"""`distillkit inspect` / `distillkit validate` of scene stores: summary; schema, completeness and content checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import zarr
from rich.table import Table

from distillkit_schemas import SCENES, Problem
from distillkit_schemas.scenes import read_alignment, validate_scene_structure

from distillkit.scenes import store as st
from distillkit.store.arrays import array_row, array_table
from distillkit.store.integrity import has_checksums, missing_objects


@dataclass
class SceneStoreSummary:
    url: str
    manifest: dict
    scenes: list[dict]
    arrays: list[dict]
    kind: str = SCENES
    problems: list[str] = field(default_factory=list)

    @property
    def completion(self) -> float:
        return 100.0 * sum(s["done"] for s in self.scenes) / max(len(self.scenes), 1)

    def as_dict(self) -> dict[str, Any]:
        return {"url": self.url, "kind": self.kind, "manifest": self.manifest, "scenes": self.scenes,
                "arrays": self.arrays, "completion_pct": self.completion, "problems": self.problems}


def summarize_scenes(group, url: str) -> SceneStoreSummary:
    """The summary of an open scene store (`url` names it in the summary)."""
    from distillkit_schemas.scenes import expected_root_arrays, expected_scene_arrays

    manifest, infos, problems = validate_scene_structure(group)
    if manifest is None:
        raise ValueError("; ".join(str(p) for p in problems))
    pairs_done, scene_done = st.done_flags(group)
    scenes, arrays = [], [array_row(group, s) for s in expected_root_arrays(manifest)]
    for k, name in enumerate(manifest.scenes):
        info = infos.get(name)
        row = {"scene": name, "pairs_done": bool(pairs_done[k]), "done": bool(scene_done[k])}
        if info is not None:
            row.update(layout=info.layout, n_frames=info.n_frames, n_edges=info.n_edges, image_hw=list(info.image_hw),
                       has_gt=info.has_gt, n_skipped_invalid=info.n_skipped_invalid, notes=info.notes)
            arrays += [array_row(group, s) for s in expected_scene_arrays(manifest, info)]
        rec = read_alignment(group, name)
        if rec is not None:
            row.update(loss=rec.loss, iterations=rec.iterations, used_known_poses=rec.used_known_poses,
                       runs=rec.runs, gt_metrics=rec.gt_metrics, timings=rec.timings)
        scenes.append(row)
    return SceneStoreSummary(url, manifest.model_dump(mode="json"), scenes, arrays,
                             problems=[str(p) for p in problems])


def _check_scene(group, name: str, thr: float) -> list[Problem]:
    base = f"scenes/{name}"
    out = []
    for key in ("pts3d", "depth", "conf", "cam2world", "intrinsics"):
        if not np.isfinite(st.read_intact(group[f"{base}/{key}"])).all():
            out.append(Problem(f"{base}/{key}", "NaN/Inf in an aligned scene"))
    conf = group[f"{base}/conf"][:]
    if np.nanmin(conf) < 1.0 - 1e-6:
        out.append(Problem(f"{base}/conf", f"confidence below 1 ({float(np.nanmin(conf)):.3g})"))
    if (group[f"{base}/depth"][:] <= 0).any():
        out.append(Problem(f"{base}/depth", "non-positive depth"))
    c2w = group[f"{base}/cam2world"][:]
    R = c2w[:, :3, :3]
    if not np.allclose(c2w[:, 3], [0, 0, 0, 1]) or not np.allclose(R @ np.swapaxes(R, 1, 2), np.eye(3), atol=1e-5):
        out.append(Problem(f"{base}/cam2world", "not rigid camera-to-world matrices"))
    K = group[f"{base}/intrinsics"][:]
    if (K[:, 0, 0] <= 0).any() or (K[:, 1, 1] <= 0).any():
        out.append(Problem(f"{base}/intrinsics", "non-positive focal length"))
    mask = group[f"{base}/mask"][:]
    if not np.array_equal(mask, conf > thr):
        out.append(Problem(f"{base}/mask", f"mask != conf > {thr}"))
    for key in st.PAIR_KEYS:
        arr = group[f"{base}/pairs/{key}"]
        for e in range(0, arr.shape[0], max(1, arr.shards[0] if arr.shards else 1)):
            if not np.isfinite(arr[e:e + (arr.shards[0] if arr.shards else 1)]).all():
                out.append(Problem(f"{base}/pairs/{key}[{e}]", "NaN/Inf (or unwritten) pair outputs"))
                break
    return out


def validate_scenes(group, progress: Callable[[int, int], None] | None = None) -> list[Problem]:
    """Every problem found in an open scene store (empty = valid): structure, completion, content of done scenes."""
    manifest, infos, problems = validate_scene_structure(group)
    if manifest is None or problems:
        return problems
    pairs_done, scene_done = st.done_flags(group)
    for k, name in enumerate(manifest.scenes):
        if not scene_done[k]:
            problems.append(Problem(f"progress/scene_done[{k}]", f"scene {name} not aligned (run align-scenes again)"))
            continue
        if not pairs_done[k]:
            problems.append(Problem(f"progress/pairs_done[{k}]", f"scene {name} is done but its pairs are not"))
        rec = read_alignment(group, name)
        if rec is None:
            problems.append(Problem(f"scenes/{name}", "aligned scene without an alignment record"))
            continue
        ids = group[f"scenes/{name}/frame_id"][:].tolist()
        if len(set(ids)) != len(ids):
            problems.append(Problem(f"scenes/{name}/frame_id", "frame ids are not unique"))
        edges = group[f"scenes/{name}/pairs/edges"][:]
        if edges.min() < 0 or edges.max() >= infos[name].n_frames:
            problems.append(Problem(f"scenes/{name}/pairs/edges", "edge index out of range"))
        try:
            problems += _check_scene(group, name, float(rec.settings.get("min_conf_thr", 3.0)))
        except ValueError as e:  # a checksum mismatch or a missing object (read_intact names the array)
            problems.append(Problem(f"scenes/{name}", str(e)))
        if progress:
            progress(k + 1, len(manifest.scenes))
    if scene_done.all() and manifest.status != "complete":
        problems.append(Problem("/", "every scene is done but the manifest status is not 'complete'"))
    return problems


def deep_check_scenes(group, progress: Callable[[int, int], None] | None = None) -> tuple[list[Problem],
                                                                                        list[Problem]]:
    """(problems, notes): read every stored object of every array, so that zarr verifies each crc32c checksum, and
    name the array and object of any that fails or is gone. Arrays of stores written before checksums are read
    (a damaged compressed object still fails) but noted as not verified."""
    arrays = [(path, a) for path, a in group.members(max_depth=None) if isinstance(a, zarr.Array)]
    manifest = st.read_scene_manifest(group)
    _, scene_done = st.done_flags(group)
    done = tuple(f"scenes/{n}/" for n, d in zip(manifest.scenes, scene_done) if d)  # all their objects are written
    problems, unchecked = [], []
    for k, (path, arr) in enumerate(sorted(arrays, key=lambda x: x[0])):
        if not has_checksums(arr):
            unchecked.append(path)
        outer = arr.shards or arr.chunks
        n_objects = max(1, -(-arr.shape[0] // outer[0])) if arr.shape else 1
        if path.startswith(done):
            gone = missing_objects(arr)
            if gone:
                problems.append(Problem(path, f"{gone} storage object(s) missing (deleted?): they read back as fill "
                                              "values"))
        for i in range(n_objects):
            try:
                arr[i * outer[0]:(i + 1) * outer[0]] if arr.shape else arr[...]
            except Exception as e:  # a checksum mismatch or an undecodable object
                problems.append(Problem(path, f"object {i} (rows {i * outer[0]}-{(i + 1) * outer[0] - 1}): "
                                              f"unreadable ({' '.join(str(e).split())[:160]})"))
        if progress:
            progress(k + 1, len(arrays))
    notes = [Problem(", ".join(unchecked[:4]) + (f" and {len(unchecked) - 4} more" if len(unchecked) > 4 else ""),
                     "no crc32c checksums (store written before checksums): bytes read but not verified")
             ] if unchecked else []
    return problems, notes


def render_scenes(s: SceneStoreSummary) -> list:
    """What `distillkit inspect` prints for a scene store: rich renderables, in order."""
    out: list = []
    m = s.manifest
    net = m["network"]
    out.append(f"[bold]{s.url}[/]  {m['schema_version']}  status [bold]{m['status']}[/]  completion "
               f"{s.completion:.0f}% ({sum(x['done'] for x in s.scenes)}/{len(s.scenes)} scenes)  version "
               f"{m['version']}")
    out.append(f"source {m['source']} ({m['layout']}), loader size {m['image_size']}, graph {m['graph']}"
               f"{' symmetrised' if m['symmetrize'] else ''}, predictor {net['predictor']} ({net['arch']})")
    if net["checkpoint_sha256"].startswith("random-init:"):
        out.append(f"[bold red]WARNING: the pair outputs come from a RANDOMLY initialised network "
                   f"({net['checkpoint_sha256']}); they are not real targets[/]")
    elif net["predictor"] == "network":
        out.append(f"network {net['checkpoint']} sha256 {net['checkpoint_sha256'][:16]}")
    t = Table(title="scenes")
    for col in ("scene", "layout", "frames", "pairs", "size", "GT", "pairs done", "aligned", "loss", "known poses",
                "GT error (median)", "align s"):
        t.add_column(col)
    for r in s.scenes:
        g = r.get("gt_metrics") or {}
        err = f"{g['point_err_cm_median']:.1f} cm" if "point_err_cm_median" in g else "-"
        t.add_row(r["scene"], r.get("layout", "?"), str(r.get("n_frames", "?")), str(r.get("n_edges", "?")),
                  "x".join(map(str, r.get("image_hw", []))), "yes" if r.get("has_gt") else "no",
                  "✓" if r["pairs_done"] else "-", "✓" if r["done"] else "-",
                  f"{r['loss']:.4g}" if "loss" in r else "-", str(r.get("used_known_poses", "-")), err,
                  f"{r['timings'].get('align_s', 0):.1f}" if "timings" in r else "-")
    out.append(t)
    out.append(array_table(s.arrays))
    for p in s.problems:
        out.append(f"[red]✗[/] {p}")
    return out


def deep_validate_scenes(group, progress: Callable[[int, int], None] | None = None
                         ) -> tuple[list[Problem], list[Problem]]:
    """(problems, notes): every object read and verified, then the usual checks of what is still readable."""
    damaged, notes = deep_check_scenes(group, progress)
    unreadable = {p.where for p in damaged}
    try:
        usual = validate_scenes(group, None)
    except ValueError:  # the usual checks read the same damaged objects: what is wrong is said above
        if not unreadable:
            raise
        usual = []
    return damaged + [p for p in usual if p.where not in unreadable], notes
