"""`distillkit inspect`, `validate` and `show`: any store; the store's kind picks the printer and the views."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from distillkit_schemas import FEATURES, SCENES

from distillkit.cli.common import app, array_table, console, describe_error, fail, setup_logging
from distillkit.cli.scenes import print_scene_summary, show_scene


def print_feature_summary(s) -> None:
    """`distillkit inspect` of a feature store."""
    m = s.manifest
    console.print(f"[bold]{s.url}[/]  {m['schema_version']}  status [bold]{m['status']}[/]  "
                  f"completion {s.completion:.0f}% ({s.shards_done}/{s.n_shards} shards)  version {m['version']}")
    console.print(f"samples {m['n_samples']} (valid {m['n_valid']}, rejected {m['n_rejected']}), shard size "
                  f"{m['shard_size']}, student input {m['image_hw'][0]}x{m['image_hw'][1]} / patch "
                  f"{m['student_patch']}, source {m['source']}")
    for name, pv in s.provenance.items():
        if pv["checkpoint_sha256"].startswith("random-init:"):
            console.print(f"[bold red]WARNING: teacher {name} was cached from RANDOM weights "
                          f"({pv['checkpoint_sha256']}); its features are not real targets[/]")
    console.print(array_table(s.arrays))
    p = Table(title="teachers")
    for col in ("teacher", "arch", "weights", "sha256", "input", "grid", "dim", "dtype", "storage",
                "bytes/sample", "vs fp16", "PCA variance"):
        p.add_column(col)
    for name, pv in s.provenance.items():
        random = pv["checkpoint_sha256"].startswith("random-init:")
        st = s.storage.get(name, {})
        var = st.get("retained_variance")
        p.add_row(name, pv["arch"], "[bold red]RANDOM INIT (" + pv["checkpoint_sha256"] + ")[/]" if random
                  else pv["checkpoint"], "-" if random else pv["checkpoint_sha256"][:16],
                  "x".join(map(str, pv["input_hw"])), "x".join(map(str, pv["grid_hw"])), str(pv["embed_dim"]),
                  pv["dtype"], pv.get("storage", "fp16"), f"{st.get('bytes_per_sample', 0):,}",
                  f"{st.get('ratio_vs_fp16', 1):.3f}x", "-" if var is None else f"{100 * var:.1f} %")
    console.print(p)
    if s.rejected:
        r = Table(title=f"rejected inputs ({len(s.rejected)})")
        r.add_column("id")
        r.add_column("reason")
        for row in s.rejected:
            r.add_row(row["id"], row["reason"])
        console.print(r)


SUMMARY_PRINTERS = {FEATURES: print_feature_summary, SCENES: print_scene_summary}


@app.command()
def inspect(store: str = typer.Argument(..., help="store path or URL"),
            as_json: bool = typer.Option(False, "--json", help="machine-readable output")):
    """Print a store's arrays, layout, sizes, completion, teacher provenance and rejected inputs."""
    setup_logging()
    from distillkit.stores import summarize

    try:
        s = summarize(store)
    except Exception as e:
        fail(f"cannot inspect {store}: {describe_error(e)}")
    if as_json:
        console.print_json(json.dumps(s.as_dict()))
        return
    SUMMARY_PRINTERS[s.kind](s)


@app.command()
def validate(store: str = typer.Argument(..., help="store path or URL"),
             deep: bool = typer.Option(False, "--deep", help="read every byte and verify every checksum; name the "
                                                             "array, shard and samples of any mismatch")):
    """Check a store against storage_schemas, completeness and NaN/Inf; exit 1 on any problem."""
    setup_logging()
    from tqdm import tqdm

    from distillkit.stores import validate_store

    bar = tqdm(desc="verifying every byte" if deep else "validating shards", unit="shard", file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    notes: list = []
    problems = validate_store(store, progress=progress, deep=deep, notes=notes)
    bar.close()
    for n in notes:
        console.print(f"[yellow]note[/] {n}")
    if problems:
        for p in problems:
            console.print(f"[red]✗[/] {p}")
        console.print(f"[bold red]{len(problems)} problem(s)[/] in {store}")
        raise typer.Exit(1)
    console.print(f"[green]✓ {store} is valid[/]")


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
    setup_logging()
    if scene is not None:  # a scene store's views (distillkit/cli/scenes.py)
        return show_scene(store, scene, Path(f"{scene}_views") if out == Path("pca.png") else out, n, checkpoint)
    from distillkit.training.dune.plots import pca_figure

    try:
        path = pca_figure(store, out, checkpoint=checkpoint, n_images=n)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    console.print(f"wrote {path}")
