"""`distillkit` commands for DUSt3R scene stores: cache-scenes, align, export-ply, synth-scenes, and the scene mode
of `show` / `inspect` (called from distillkit/cli/stores.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from distillkit.cli.common import app, console, fail, setup_logging


def show_scene(store: str, scene: str, out: Path, n: int, checkpoint: str | None = None) -> None:
    """`distillkit show --scene`: PNG views of one scene (with a pointmap student's checkpoint: student vs
    teacher on test frames)."""
    from distillkit.scenes.export import show_scene as run

    if checkpoint is not None:
        from distillkit.training.pointmap.plots import show_student

        try:
            res = show_student(store, scene, checkpoint, out, n)
        except (ValueError, KeyError) as e:
            fail(str(e))
        console.print(f"wrote {res['overview']} ({len(res['frames'])} {res['pool']} frames: image, teacher, "
                      f"student, L2 error; mean L2 {res['mean_l2']:.4g}) and {len(res['files'])} PNGs")
        return
    try:
        res = run(store, out, scene, n_frames=n)
    except (ValueError, KeyError) as e:
        fail(str(e))
    console.print(f"wrote {len(res['files'])} PNGs ({', '.join(res['columns'][1:])} for {len(res['frames'])} "
                  f"frames) and {res['overview']}")


@app.command("cache-scenes")
def cache_scenes(
    source: Optional[str] = typer.Option(None, help="dataset root or one scene (12-Scenes, 7-Scenes, images)"),
    store: Optional[str] = typer.Option(None, help="output scene store"),
    checkpoint: Optional[str] = typer.Option(None, help="DUSt3R/MASt3R weights (path, URL, hf-hub:id)"),
    image_size: Optional[int] = typer.Option(None, help="DUSt3R loader size: 512 | 224 | multiple of 16"),
    graph: Optional[str] = typer.Option(None, help="complete | swin-K | logwin-K | oneref-R | overlap-K"),
    max_frames: Optional[int] = typer.Option(None, help="frames per scene (evenly spread) [default: 24]"),
    predictor: Optional[str] = typer.Option(None, help="network (DUSt3R, the default) | gt-depth: exact pairs from "
                                                       "the dataset's depth and poses, no weights needed (synthetic "
                                                       "scenes, tests, upper bounds)"),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda[:N]"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML with SceneCacheConfig fields"),
):
    """Pairs -> DUSt3R inference -> global alignment -> scene store, scene by scene (resumable)."""
    from distillkit.config.scenes import SceneCacheConfig
    from distillkit.config.common import load_config
    from distillkit.scenes import run_scenes
    from distillkit.store import StoreMismatch
    setup_logging()
    network = {"checkpoint": checkpoint} if checkpoint else None
    try:
        cfg = load_config(SceneCacheConfig, config, source=source, store=store, image_size=image_size,
                          graph=graph, max_frames=max_frames, device=device, network=network,
                          predictor=predictor)
        res = run_scenes(cfg)
    except (StoreMismatch, ValueError) as e:
        fail(str(e))
    for r in res["scenes"]:
        console.print(f"scene {r['scene']}: {r['n_frames']} frames, {r['n_edges']} pairs, loss {r['loss']:.4g}, "
                      f"{r['timings']['total_s']:.1f} s")
    if res["nothing_to_do"]:
        console.print(f"[green]store {cfg.store} is already complete: nothing to do[/]")
    console.print(f"status: {res['finalize']['status']} -> {cfg.store}")


@app.command("align")
def align_cmd(
    store: str = typer.Argument(..., help="scene store"),
    scene: Optional[str] = typer.Option(None, help="one scene (default: every scene with stored pairs)"),
    known_poses: Optional[bool] = typer.Option(None, "--known-poses/--free-poses",
                                               help="fix the cameras to the dataset's poses "
                                                    "[default: the store's setting]"),
    known_intrinsics: Optional[bool] = typer.Option(None, "--known-intrinsics/--free-intrinsics",
                                                    help="fix focal + principal point [default: the store's setting]"),
    min_conf_thr: Optional[float] = typer.Option(None, help="mask threshold [default: the store's setting]"),
    pose_pixels: Optional[int] = typer.Option(None, help="pixels per image in the pose stage"),
    add: Optional[list[str]] = typer.Option(None, "--add", help="add these frames to --scene (frame ids, image "
                                            "files or a folder of the scene's source; repeatable), then re-align "
                                            "from the old poses: pairs only for the new frames"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="with --add: the store's cache-scenes YAML "
                                          "(network, source) [the store's manifest]"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Re-run the global alignment from the stored pair outputs (no network), or add frames to a scene."""
    from distillkit.scenes import realign
    setup_logging()
    overrides = {k: v for k, v in dict(known_poses=known_poses, known_intrinsics=known_intrinsics,
                                       min_conf_thr=min_conf_thr, pose_pixels=pose_pixels).items()
                 if v is not None}
    if add:
        _add_frames(store, scene, add, config, overrides, as_json)
        return
    try:
        res = realign(store, scene, overrides)
    except (ValueError, KeyError) as e:
        fail(str(e))
    if as_json:
        print(json.dumps(res, indent=1))
        return
    for r in res:
        g = r["gt_metrics"]
        err = f", GT point error {g['point_err_cm_median']:.2f} cm (median)" if "point_err_cm_median" in g else ""
        console.print(f"scene {r['scene']}: loss {r['loss']:.6g} in {r['iterations']} iterations, "
                      f"{r['align_s']:.1f} s (run {r['runs']}){err}")


def _expand(items: list[str]) -> list[str]:
    """Folders and globs -> image files (sorted); anything else (frame ids, files) as given."""
    import glob

    out = []
    for x in items:
        p = Path(x)
        if p.is_dir():
            out += sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in (".jpg", ".jpeg", ".png"))
        elif any(c in x for c in "*?["):
            out += sorted(glob.glob(x))
        else:
            out.append(x)
    return out


def _add_frames(store: str, scene: str | None, add: list[str], config, overrides: dict, as_json: bool) -> None:
    from distillkit.scenes.add import add_config, add_frames

    if not scene:
        fail("--add needs --scene")
    try:
        cfg = add_config(store, config)
        if overrides:
            cfg = cfg.model_copy(update={"align": cfg.align.model_copy(update=overrides)})
        res = add_frames(cfg, scene, _expand(add))
    except (ValueError, KeyError) as e:
        fail(str(e))
    if as_json:
        print(json.dumps(res, indent=1))
        return
    console.print(f"scene {res['scene']}: {len(res['added'])} frame(s) added ({res['new_edges']} new pairs; "
                  f"{res['n_frames']} frames, {res['n_edges']} pairs), loss {res['loss']:.6g} in "
                  f"{res['iterations']} iterations, {res['align_s']:.1f} s")


@app.command("export-ply")
def export_ply_cmd(
    store: str = typer.Argument(..., help="scene store"),
    scene: Optional[str] = typer.Option(None, help="scene name (optional if the store holds one)"),
    out: Path = typer.Option(..., help="output .ply"),
    conf_thr: Optional[float] = typer.Option(None, help="keep points with confidence above "
                                                        "[default: the alignment's threshold]"),
    stride: int = typer.Option(1, help="every k-th pixel in x and y"),
):
    """Write a coloured, confidence-thresholded binary PLY point cloud (MeshLab, Open3D, CloudCompare)."""
    from distillkit.scenes.export import export_ply

    try:
        res = export_ply(store, out, scene, conf_thr, stride=stride)
    except (ValueError, KeyError) as e:
        fail(str(e))
    console.print(f"wrote {res['points']} points (scene {res['scene']}, conf > {res['conf_thr']:g}) -> "
                  f"{res['path']}")


@app.command("synth-scenes")
def synth_scenes(
    out: Path = typer.Argument(..., help="dataset folder to write"),
    scenes: int = typer.Option(1, help="number of scenes"),
    frames: int = typer.Option(24, help="frames per scene"),
    layout: str = typer.Option("12scenes", help="12scenes | 7scenes"),
    color: str = typer.Option("968x1296", help="colour size HxW"),
    depth: str = typer.Option("480x640", help="depth size HxW"),
    seed: int = typer.Option(0),
    quiet: bool = typer.Option(False, "--quiet", help="no progress"),
):
    """Write synthetic scenes (textured room, exact depth and poses) in the 12-Scenes or 7-Scenes layout (about
    8 s per frame at the default 968x1296 on a laptop CPU core; --color 240x320 --depth 120x160 is ~0.2 s)."""
    from distillkit.config.common import parse_hw
    from distillkit.progress import Progress
    from distillkit.scenes.synthetic import write_dataset

    if layout not in ("12scenes", "7scenes"):
        fail("layout must be 12scenes or 7scenes")
    with Progress(scenes * frames, "synth-scenes", "frame", quiet) as bar:
        paths = write_dataset(out, scenes, layout, seed, n_frames=frames, color_hw=parse_hw(color),
                              depth_hw=parse_hw(depth), on_frame=bar.advance)
    console.print(f"wrote {len(paths)} {layout} scene(s) under {out}")
