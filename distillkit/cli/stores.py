"""`distillkit inspect`, `validate` and `show`: any store; the store's kind picks the printer and the views."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from distillkit.cli.common import app, console, describe_error, fail, setup_logging
from distillkit.cli.scenes import show_scene


@app.command()
def inspect(store: str = typer.Argument(..., help="store path or URL"),
            as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
            exact: bool = typer.Option(False, "--exact", help="list every object for the sizes and rejected "
                                                              "inputs, not the summary the last finalize wrote")):
    """Print a store's arrays, layout, sizes, completion, teacher provenance and rejected inputs."""
    setup_logging()
    from distillkit.stores import render, summarize

    try:
        s = summarize(store, exact=exact)
    except Exception as e:
        fail(f"cannot inspect {store}: {describe_error(e)}")
    if as_json:
        console.print_json(json.dumps(s.as_dict()))
        return
    for part in render(s):
        console.print(part)


@app.command()
def validate(store: str = typer.Argument(..., help="store path or URL"),
             deep: bool = typer.Option(False, "--deep", help="read every byte and verify every checksum; name the "
                                                             "array, shard and samples of any mismatch"),
             sample: Optional[str] = typer.Option(None, "--sample", help="check a seeded random sample of the shards: "
                                                                        "a percentage (1%), a fraction or a count"),
             shards: Optional[str] = typer.Option(None, "--shards", help="check shards FIRST:LAST only (Python "
                                                                        "slice bounds, e.g. 0:1000 or 5000:)"),
             seed: int = typer.Option(0, "--seed", help="seed of --sample"),
             quiet: bool = typer.Option(False, "--quiet", help="no progress")):
    """Check a store against storage_schemas, completeness and NaN/Inf; exit 1 on any problem. Shards are checked
    in parallel; --sample / --shards check some of them (said in the output)."""
    setup_logging()
    from distillkit.progress import Progress
    from distillkit.store.validation import Selection
    from distillkit.stores import validate_store

    try:
        select = Selection(shards, sample, seed) if sample is not None or shards is not None else None
    except ValueError as e:
        fail(str(e))

    notes: list = []
    with Progress(0, "verifying every byte" if deep else "validating", "shard", quiet) as bar:
        try:
            problems = validate_store(store, progress=bar.update, deep=deep, notes=notes, select=select)
        except ValueError as e:  # a selection of a scene store's shards; an unreadable progress table
            fail(str(e))
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
