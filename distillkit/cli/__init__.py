"""The `distillkit` command: cache, inspect, validate, train, bench, teachers."""

from __future__ import annotations

import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Run vision teachers once into Zarr v3 stores, then stream them into students.")
bench_app = typer.Typer(no_args_is_help=True, help="Measure the reader and the caching pipeline.")
app.add_typer(bench_app, name="bench")
# wide tables when piped (CI logs, files); the terminal width otherwise
console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=err, show_path=False, show_time=False)], force=True)
    for noisy in ("matplotlib", "PIL", "fsspec", "s3fs", "botocore", "aiobotocore", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")


def _fail(msg: str) -> None:
    err.print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(2)


def _human(n: Optional[float]) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return str(n)


def _cache_config(config, source, store, teacher, checkpoint, seed, student_patch, image_size, shard_size,
                  batch_size, num_workers, device, val_fraction, codec, views=None, view_mode=None):
    from distillkit.config.cache import CacheConfig
    from distillkit.config.common import load_config

    teachers = None
    if teacher:
        if checkpoint and len(checkpoint) not in (1, len(teacher)):
            _fail(f"give one --checkpoint per --teacher ({len(teacher)} teachers, {len(checkpoint)} checkpoints)")
        ckpts = list(checkpoint or []) + [None] * len(teacher)
        teachers = [{"name": t, "checkpoint": ckpts[i], "seed": seed} for i, t in enumerate(teacher)]
    try:
        return load_config(CacheConfig, config, source=source, store=store, teachers=teachers,
                           student_patch=student_patch, image_size=image_size, shard_size=shard_size,
                           batch_size=batch_size, num_workers=num_workers, device=device,
                           val_fraction=val_fraction, codec=codec, views=views, view_mode=view_mode)
    except ValueError as e:
        _fail(str(e))


@app.command()
def cache(
    source: Optional[str] = typer.Option(None, help="folder, glob, fsspec URL or manifest file (.txt/.csv/.jsonl)"),
    store: Optional[str] = typer.Option(None, help="output store: local path or URL (s3://bucket/prefix)"),
    teacher: Optional[list[str]] = typer.Option(None, help="teacher name (repeat for several); see `teachers`"),
    checkpoint: Optional[list[str]] = typer.Option(None, help="weights per teacher: path, fsspec URL or hf-hub:id"),
    seed: int = typer.Option(0, help="random-init seed when no checkpoint is given"),
    student_patch: Optional[int] = typer.Option(None, help="student patch size [14]"),
    image_size: Optional[str] = typer.Option(None, help="student input size, N or HxW [224]"),
    shard_size: Optional[int] = typer.Option(None, help="samples per shard [64]"),
    batch_size: Optional[int] = typer.Option(None, help="teacher batch size [32]"),
    num_workers: Optional[int] = typer.Option(None, help="image decoding threads [4]"),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda[:N]"),
    val_fraction: Optional[float] = typer.Option(None, help="held-out fraction [0.05]"),
    codec: Optional[str] = typer.Option(None, help="feature compressor: none | zstd | lz4 [none]"),
    views: Optional[int] = typer.Option(None, help="K replayable views per image [1]"),
    view_mode: Optional[str] = typer.Option(None, help="center | random (random resized crop + flip) [center]"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML file with these fields"),
    quiet: bool = typer.Option(False, help="no progress bar"),
):
    """Run teachers once over a source and write their features to a Zarr v3 store (resumable)."""
    _setup_logging()
    cfg = _cache_config(config, source, store, teacher, checkpoint, seed, student_patch, image_size, shard_size,
                        batch_size, num_workers, device, val_fraction, codec, views, view_mode)
    from distillkit.cache import run_cache
    from distillkit.store import StoreMismatch

    try:
        result = run_cache(cfg, show_progress=not quiet)
    except (StoreMismatch, ValueError) as e:
        _fail(str(e))
    fin = result["finalize"]
    if result["nothing_to_do"]:
        console.print(f"[green]store {cfg.store} is already complete: nothing to do[/]")
    else:
        console.print(f"cached {result['samples']} samples in {result['shards']} shards "
                      f"({result['wall_s']:.1f} s) -> {cfg.store}")
    for r in result["rejected"]:
        console.print(f"[yellow]rejected[/] {r['uri']}: {r['reason']}")
    console.print(f"status: {fin['status']}" + (f", {fin['n_valid']} valid, {fin['n_rejected']} rejected"
                                                 if fin["status"] == "complete" else ""))


@app.command()
def inspect(store: str = typer.Argument(..., help="store path or URL"),
            as_json: bool = typer.Option(False, "--json", help="machine-readable output")):
    """Print a store's arrays, layout, sizes, completion, teacher provenance and rejected inputs."""
    _setup_logging()
    from distillkit.store.inspect import summarize

    try:
        s = summarize(store)
    except Exception as e:
        _fail(f"cannot inspect {store}: {e}")
    if as_json:
        console.print_json(json.dumps(s.as_dict()))
        return
    if getattr(s, "kind", None) == "scenes":  # a DUSt3R scene store (distillkit/cli_scenes.py)
        from distillkit.cli.scenes import print_scene_summary

        return print_scene_summary(s)
    m = s.manifest
    console.print(f"[bold]{store}[/]  {m['schema_version']}  status [bold]{m['status']}[/]  "
                  f"completion {s.completion:.0f}% ({s.shards_done}/{s.n_shards} shards)  version {m['version']}")
    console.print(f"samples {m['n_samples']} (valid {m['n_valid']}, rejected {m['n_rejected']}), shard size "
                  f"{m['shard_size']}, student input {m['image_hw'][0]}x{m['image_hw'][1]} / patch "
                  f"{m['student_patch']}, source {m['source']}")
    for name, pv in s.provenance.items():
        if pv["checkpoint_sha256"].startswith("random-init:"):
            console.print(f"[bold red]WARNING: teacher {name} was cached from RANDOM weights "
                          f"({pv['checkpoint_sha256']}); its features are not real targets[/]")
    t = Table(title="arrays", show_lines=False)
    for col in ("array", "shape", "dtype", "chunk", "shard", "codec", "stored", "raw", "ratio"):
        t.add_column(col, justify="right" if col in ("stored", "raw", "ratio") else "left")
    for a in s.arrays:
        if a.get("missing"):
            t.add_row(a["path"], "[red]missing[/]", *[""] * 7)
            continue
        t.add_row(a["path"], str(tuple(a["shape"])), "str" if "String" in a["dtype"] else a["dtype"], str(tuple(a["chunks"])),
                  str(tuple(a["shards"])) if a["shards"] else "-", a["codec"], _human(a["stored_bytes"]),
                  _human(a["raw_bytes"]) if a["raw_bytes"] else "-", f"{a['ratio']:.2f}" if a["ratio"] else "-")
    console.print(t)
    p = Table(title="teachers")
    for col in ("teacher", "arch", "weights", "sha256", "input", "grid", "dim", "dtype"):
        p.add_column(col)
    for name, pv in s.provenance.items():
        random = pv["checkpoint_sha256"].startswith("random-init:")
        p.add_row(name, pv["arch"], "[bold red]RANDOM INIT (" + pv["checkpoint_sha256"] + ")[/]" if random
                  else pv["checkpoint"], "-" if random else pv["checkpoint_sha256"][:16],
                  "x".join(map(str, pv["input_hw"])), "x".join(map(str, pv["grid_hw"])), str(pv["embed_dim"]),
                  pv["dtype"])
    console.print(p)
    if s.rejected:
        r = Table(title=f"rejected inputs ({len(s.rejected)})")
        r.add_column("id")
        r.add_column("reason")
        for row in s.rejected:
            r.add_row(row["id"], row["reason"])
        console.print(r)


@app.command()
def validate(store: str = typer.Argument(..., help="store path or URL")):
    """Check a store against distillkit_schemas, completeness and NaN/Inf; exit 1 on any problem."""
    _setup_logging()
    from tqdm import tqdm

    from distillkit.store.inspect import validate_store

    bar = tqdm(desc="validating shards", unit="shard", file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    problems = validate_store(store, progress=progress)
    bar.close()
    if problems:
        for p in problems:
            console.print(f"[red]✗[/] {p}")
        console.print(f"[bold red]{len(problems)} problem(s)[/] in {store}")
        raise typer.Exit(1)
    console.print(f"[green]✓ {store} is valid[/]")


@app.command()
def train(
    store: Optional[list[str]] = typer.Option(None, help="store(s) to stream (repeat to zip several); pointmap: the "
                                                         "scene store"),
    out: Optional[str] = typer.Option(None, help="output folder for checkpoints and metrics"),
    task: Optional[str] = typer.Option(None, help="dune (default): multi-teacher features | pointmap: one "
                                                  "scene-specific pointmap student per scene of a scene store"),
    teacher: Optional[list[str]] = typer.Option(None, help="dune: subset of teachers (default: all)"),
    preset: Optional[str] = typer.Option(None, help="dune: student size vit_tiny | vit_small | vit_base"),
    depth: Optional[int] = typer.Option(None, help="dune: override the student depth"),
    embed_dim: Optional[int] = typer.Option(None, help="dune: override the student width"),
    heads: Optional[int] = typer.Option(None, help="dune: override the student heads"),
    projector: Optional[str] = typer.Option(None, help="dune: tp (transformer projector) | mlp"),
    student: Optional[str] = typer.Option(None, help="pointmap: small_cnn | paper_cnn | paper_mobilenet | paper_vit "
                                                     "| paper_vit_best (+ its 200 epochs, targets x100) or cnn | "
                                                     "mobilenet | vit; replaces the config file's student"),
    scene: Optional[list[str]] = typer.Option(None, help="pointmap: scene(s) to train (default: every aligned one)"),
    image_size: Optional[str] = typer.Option(None, help="pointmap: training resolution HxW (default: the store's)"),
    max_minutes: Optional[float] = typer.Option(None, help="pointmap: training-time budget per scene"),
    batch_size: Optional[int] = typer.Option(None),
    epochs: Optional[float] = typer.Option(None),
    max_steps: Optional[int] = typer.Option(None),
    lr: Optional[float] = typer.Option(None),
    num_workers: Optional[int] = typer.Option(None, help="dune: DataLoader workers"),
    device: Optional[str] = typer.Option(None),
    seed: Optional[int] = typer.Option(None),
    no_resume: bool = typer.Option(False, help="start fresh even if a checkpoint exists"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML file with TrainConfig fields (or "
                                                                       "PointmapJobConfig fields with task: pointmap)"),
):
    """Train a DUNE-style student by streaming cached teacher features, or (--task pointmap) scene-specific
    pointmap students on a DUSt3R scene store."""
    _setup_logging()
    from distillkit.training.tasks import load_train_config, train_config_model
    from distillkit.config.common import read_config_file

    common = dict(out_dir=out, task=task, batch_size=batch_size, epochs=epochs, max_steps=max_steps, lr=lr,
                  device=device, seed=seed, resume=False if no_resume else None)
    try:
        file_data = read_config_file(config)
        chosen = task or file_data.get("task") or "dune"
        train_config_model({"task": chosen}, config)  # an unknown task fails here, naming the file
        pointmap = chosen == "pointmap"  # the task decides which options apply
        dune_only = {"--teacher": teacher, "--preset": preset, "--depth": depth, "--embed-dim": embed_dim,
                     "--heads": heads, "--projector": projector, "--num-workers": num_workers}
        pointmap_only = {"--student": student, "--scene": scene, "--image-size": image_size,
                         "--max-minutes": max_minutes}
        wrong = [k for k, v in (dune_only if pointmap else pointmap_only).items() if v is not None]
        if wrong:
            raise ValueError(f"{', '.join(wrong)} do not apply to --task {chosen}")
        if pointmap:
            if len(store or []) > 1:
                raise ValueError("--task pointmap reads one scene store: give --store once")
            cfg = load_train_config(config, **{**common, "store": (store or [None])[0], "scenes": scene or None,
                                               "image_size": image_size, "max_minutes": max_minutes,
                                               **_pointmap_student_overrides(student, common)})
            return _train_pointmap(cfg)
        dune = None
        if any(v is not None for v in (preset, depth, embed_dim, heads)):
            dune = {k: v for k, v in {"preset": preset, "depth": depth, "embed_dim": embed_dim,
                                      "num_heads": heads}.items() if v is not None}
        cfg = load_train_config(config, **common, stores=store or None, teachers=teacher or None, student=dune,
                                projector=projector, num_workers=num_workers)
        from distillkit.training.dune.trainer import train as run_train

        result = run_train(cfg)
    except ValueError as e:
        _fail(str(e))
    console.print(f"trained {result['steps']} steps in {result['wall_s']:.1f} s; loss {result['first_loss']:.4f} "
                  f"-> {result['last_loss']:.4f}")
    for t, v in result["final_eval"].items():
        if isinstance(v, dict):
            console.print(f"  held-out {t}: " + ", ".join(f"{k} {x:.4f}" if isinstance(x, float) else f"{k} {x}"
                                                        for k, x in v.items()))
    console.print(f"checkpoint {result['checkpoint']}\nmetrics {result['metrics']}\nloss curve {result['loss_curve']}")


def _pointmap_student_overrides(student: str | None, given: dict) -> dict:
    """--student as config overrides. It replaces the config file's whole `student:` block: a student preset
    (small_cnn, paper_vit, ...), a kind (cnn | mobilenet | vit) with default fields, or a training preset
    (paper_vit_best) whose student and training fields beat the file's (options given on the command line win)."""
    from distillkit.training.pointmap.config import STUDENT_PRESETS, TRAIN_PRESETS

    if student is None:
        return {}
    if student in TRAIN_PRESETS:
        preset = {k: v for k, v in TRAIN_PRESETS[student].items() if given.get(k) is None}
        return {"preset": student, **preset}
    return {"student": {"preset": student} if student in STUDENT_PRESETS else {"kind": student}}


def _train_pointmap(cfg) -> None:
    """`distillkit train --task pointmap`: a progress bar per scene, then the per-scene table."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from distillkit.training.pointmap.job import train_pointmap_scenes

    bars: dict[str, int] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                  TimeElapsedColumn(), console=console, disable=not console.is_terminal) as progress:
        def on_step(scene: str, step: int, total: int, rec: dict) -> None:
            if scene not in bars:
                bars[scene] = progress.add_task(f"{scene} ({cfg.student.kind})", total=total, loss="-")
            progress.update(bars[scene], completed=step, total=total, loss=f"{rec['loss']:.4g}")

        res = train_pointmap_scenes(cfg, on_step)
    t = Table(title=f"pointmap students ({cfg.student.kind}) on {cfg.store}")
    cols = ("scene", "size_mb", "steps", "train_s", "mean_l2", "mean_l2_over_extent", "pct_10cm_10deg",
            "median_t_cm", "median_r_deg")
    for c in cols:
        t.add_column(c)
    for r in res["rows"]:
        t.add_row(*[f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in cols])
    console.print(t)
    console.print(f"summary {res['summary_json']} and {res['summary_csv']}; per-scene checkpoints, metrics and "
                  f"loss curves under {cfg.out_dir}/<scene>/")


@app.command()
def show(store: str = typer.Argument(..., help="store path or URL"),
         pca: bool = typer.Option(True, "--pca/--no-pca", help="top-3 PCA of teacher (and student) patch features"),
         checkpoint: Optional[str] = typer.Option(None, help="student checkpoint to add as a column (with --scene: "
                                                            "a pointmap student, shown beside the teacher)"),
         n: int = typer.Option(4, help="number of images"),
         out: Path = typer.Option(Path("pca.png"), help="output PNG (with --scene: output folder)"),
         scene: Optional[str] = typer.Option(None, help="scene store: PNGs of this scene's depth, confidence and "
                                                        "pointmap (as RGB) into the --out folder; with --checkpoint "
                                                        "the student's pointmap and error on test frames")):
    """Write PNG views of a store: PCA images of each teacher's (and a student's) patch features; with --scene, a
    scene store's depth/confidence/pointmap, or with --checkpoint a pointmap student beside the teacher."""
    _setup_logging()
    if scene is not None:  # scene stores (distillkit/cli_scenes.py)
        from distillkit.cli.scenes import show_scene

        return show_scene(store, scene, Path(f"{scene}_views") if out == Path("pca.png") else out, n, checkpoint)
    from distillkit.training.dune.plots import pca_figure

    try:
        path = pca_figure(store, out, checkpoint=checkpoint, n_images=n)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    console.print(f"wrote {path}")


@app.command()
def teachers():
    """List the teachers that `cache --teacher` accepts."""
    from distillkit.teachers import teacher_names

    for n in teacher_names():
        console.print(n)


@bench_app.command("loader")
def bench_loader(store: str = typer.Option(..., help="store to read"),
                 batch_size: int = typer.Option(64), num_workers: int = typer.Option(0),
                 epochs: int = typer.Option(2), shuffle_shards: int = typer.Option(2),
                 as_json: bool = typer.Option(False, "--json")):
    """Training reader vs the same pipeline over a raw memory-mapped .npy copy (same run)."""
    _setup_logging()
    from distillkit.bench.loader import bench_loader as run

    res = run(store, batch_size=batch_size, num_workers=num_workers, epochs=epochs, shuffle_shards=shuffle_shards)
    _print_bench(res, as_json)


@bench_app.command("cache")
def bench_cache(source: str = typer.Option(...), teacher: str = typer.Option("dinov2_vits14_reg"),
                checkpoint: Optional[str] = typer.Option(None), image_size: str = typer.Option("224"),
                student_patch: int = typer.Option(14), batch_size: int = typer.Option(32),
                num_workers: int = typer.Option(4), shard_size: int = typer.Option(64),
                as_json: bool = typer.Option(False, "--json")):
    """Cache wall time vs the bare teacher forward on the same preprocessed images."""
    _setup_logging()
    from distillkit.bench.loader import bench_cache as run

    res = run(source, teacher, checkpoint=checkpoint, image_size=image_size, student_patch=student_patch,
              batch_size=batch_size, num_workers=num_workers, shard_size=shard_size)
    _print_bench(res, as_json)


@bench_app.command("align")
def bench_align(fixture: Optional[Path] = typer.Option(None, help=".npz laid out like ga_scene6.npz"),
                synthetic: Optional[int] = typer.Option(None, help="generate an N-image scene instead"),
                size: str = typer.Option("48x64", help="HxW of the synthetic scene"),
                graph: str = typer.Option("swin-3", help="pair graph of the synthetic scene"),
                reference: bool = typer.Option(False, help="also time the official-style Adam optimiser (300 its)"),
                repeats: int = typer.Option(1, help="run ours this many times, report the fastest"),
                threads: int = typer.Option(1, help="torch threads for both (1 = stable timings)"),
                as_json: bool = typer.Option(False, "--json")):
    """Global alignment: wall time, iterations, peak RSS and accuracy (vs the stored official result / GT)."""
    _setup_logging()
    from distillkit.bench.align import bench_align as run

    if (fixture is None) == (synthetic is None):
        _fail("give --fixture FILE.npz or --synthetic N")
    if fixture is not None and not fixture.exists():
        _fail(f"fixture {fixture} does not exist")
    try:
        res = run(fixture=str(fixture) if fixture else None, synthetic=synthetic, size=size, graph=graph,
                  reference=reference, repeats=repeats, threads=threads)
    except (ValueError, KeyError) as e:
        _fail(f"cannot align {fixture or 'synthetic scene'}: {e}")
    res = {k: v for k, v in res.items() if not isinstance(v, (dict, list))} if not as_json else res
    _print_bench(res, as_json)


def _print_bench(res: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(res, indent=1, default=float))
        return
    t = Table(title=res.get("bench", "bench"))
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in res.items():
        t.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    console.print(t)


from distillkit.cli.scenes import register as _register_scene_commands  # noqa: E402  (cache-scenes, align, export-ply, ...)

_register_scene_commands(app)

if __name__ == "__main__":
    app()
