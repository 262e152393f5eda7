"""`distillkit bench ...`: the reader, the caching pipeline and global alignment, each against a baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from distillkit.cli.common import app, fail, print_metrics, setup_logging

bench_app = typer.Typer(no_args_is_help=True, help="Measure the reader and the caching pipeline.")
app.add_typer(bench_app, name="bench")


@bench_app.command("loader")
def bench_loader(store: str = typer.Option(..., help="store to read"),
                 batch_size: int = typer.Option(64), num_workers: int = typer.Option(0),
                 epochs: int = typer.Option(2), shuffle_shards: int = typer.Option(2),
                 as_json: bool = typer.Option(False, "--json")):
    """Training reader vs the same pipeline over a raw memory-mapped .npy copy (same run)."""
    setup_logging()
    from distillkit.bench.loader import bench_loader as run

    res = run(store, batch_size=batch_size, num_workers=num_workers, epochs=epochs, shuffle_shards=shuffle_shards)
    print_metrics(res, as_json)


@bench_app.command("cache")
def bench_cache(source: str = typer.Option(...), teacher: str = typer.Option("dinov2_vits14_reg"),
                checkpoint: Optional[str] = typer.Option(None), image_size: str = typer.Option("224"),
                student_patch: int = typer.Option(14), batch_size: int = typer.Option(32),
                num_workers: int = typer.Option(4), shard_size: int = typer.Option(64),
                as_json: bool = typer.Option(False, "--json")):
    """Cache wall time vs the bare teacher forward on the same preprocessed images."""
    setup_logging()
    from distillkit.bench.cache import bench_cache as run

    res = run(source, teacher, checkpoint=checkpoint, image_size=image_size, student_patch=student_patch,
              batch_size=batch_size, num_workers=num_workers, shard_size=shard_size)
    print_metrics(res, as_json)


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
    setup_logging()
    from distillkit.bench.align import bench_align as run

    if (fixture is None) == (synthetic is None):
        fail("give --fixture FILE.npz or --synthetic N")
    if fixture is not None and not fixture.exists():
        fail(f"fixture {fixture} does not exist")
    try:
        res = run(fixture=str(fixture) if fixture else None, synthetic=synthetic, size=size, graph=graph,
                  reference=reference, repeats=repeats, threads=threads)
    except (ValueError, KeyError) as e:
        fail(f"cannot align {fixture or 'synthetic scene'}: {e}")
    res = {k: v for k, v in res.items() if not isinstance(v, (dict, list))} if not as_json else res
    print_metrics(res, as_json)
