"""`distillkit cache` (teachers -> feature store) and `distillkit teachers`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from distillkit.cli.common import app, console, fail, setup_logging


def _cache_config(config, source, store, teacher, checkpoint, seed, student_patch, image_size, shard_size,
                  batch_size, num_workers, device, val_fraction, codec, views=None, view_mode=None):
    from distillkit.config.cache import CacheConfig
    from distillkit.config.common import load_config

    teachers = None
    if teacher:
        if checkpoint and len(checkpoint) not in (1, len(teacher)):
            fail(f"give one --checkpoint per --teacher ({len(teacher)} teachers, {len(checkpoint)} checkpoints)")
        ckpts = list(checkpoint or []) + [None] * len(teacher)
        teachers = [{"name": t, "checkpoint": ckpts[i], "seed": seed} for i, t in enumerate(teacher)]
    try:
        return load_config(CacheConfig, config, source=source, store=store, teachers=teachers,
                           student_patch=student_patch, image_size=image_size, shard_size=shard_size,
                           batch_size=batch_size, num_workers=num_workers, device=device,
                           val_fraction=val_fraction, codec=codec, views=views, view_mode=view_mode)
    except ValueError as e:
        fail(str(e))


@app.command()
def cache(
    source: Optional[str] = typer.Option(None, help="folder, glob, fsspec URL or manifest file (.txt/.csv/.jsonl)"),
    store: Optional[str] = typer.Option(None, help="output store: local path or URL (s3://bucket/prefix)"),
    teacher: Optional[list[str]] = typer.Option(None, help="teacher name (repeat for several); see `teachers`"),
    checkpoint: Optional[list[str]] = typer.Option(None, help="weights per teacher: path, fsspec URL or hf-hub:id"),
    seed: int = typer.Option(0, help="random-init seed when no checkpoint is given"),
    student_patch: Optional[int] = typer.Option(None, help="student patch size [default: 14]"),
    image_size: Optional[str] = typer.Option(None, help="student input size, N or HxW [default: 224]"),
    shard_size: Optional[int] = typer.Option(None, help="samples per shard [default: 64]"),
    batch_size: Optional[int] = typer.Option(None, help="teacher batch size [default: 32]"),
    num_workers: Optional[int] = typer.Option(None, help="image decoding threads [default: 4]"),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda[:N]"),
    val_fraction: Optional[float] = typer.Option(None, help="held-out fraction [default: 0.05]"),
    codec: Optional[str] = typer.Option(None, help="feature compressor: none | zstd | lz4 [default: none]"),
    views: Optional[int] = typer.Option(None, help="K replayable views per image [default: 1]"),
    view_mode: Optional[str] = typer.Option(None, help="center | random (random resized crop + flip) "
                                                       "[default: center]"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML file with these fields"),
    storage: Optional[str] = typer.Option(None, help="patch tokens stored as fp16 | int8 | pca:K | pca:K+int8, for "
                                                     "every teacher (per teacher: `storage:` in the YAML) [fp16]"),
    prune: bool = typer.Option(False, "--prune", help="on a re-run, mark samples whose file left the source "
                                                      "invalid (default: report and keep them)"),
    rehash: bool = typer.Option(False, "--rehash", help="read every source file and compare content digests to "
                                                        "find files replaced in place (default: ETag, or size + "
                                                        "mtime)"),
    repair: bool = typer.Option(False, "--repair", help="verify every checksum of the store and recompute exactly "
                                                        "the damaged shards"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress"),
):
    """Run teachers once over a source and write their features to a Zarr v3 store (resumable)."""
    setup_logging()
    cfg = _cache_config(config, source, store, teacher, checkpoint, seed, student_patch, image_size, shard_size,
                        batch_size, num_workers, device, val_fraction, codec, views, view_mode)
    if prune or rehash:
        cfg = cfg.model_copy(update={"prune": prune or cfg.prune, "rehash": rehash or cfg.rehash})
    if storage is not None:
        try:
            teachers = [t.model_validate({**t.model_dump(), "storage": storage}) for t in cfg.teachers]
        except ValueError as e:
            fail(f"--storage: {e}")
        cfg = cfg.model_copy(update={"teachers": teachers})
    from distillkit.features.pipeline import run_cache
    from distillkit.features.repair import repair_store
    from distillkit.store import StoreMismatch
    from distillkit.store.lease import StoreBusy
    from distillkit.store.writer import StoreFull

    try:
        result = (repair_store if repair else run_cache)(cfg, show_progress=not quiet)
    except (StoreMismatch, StoreBusy, StoreFull, ValueError) as e:
        fail(str(e))
    fin = result["finalize"]
    if repair:
        console.print(f"[green]{cfg.store}: every checksum matches; nothing to repair[/]" if result["nothing_to_do"]
                      else f"repaired shard(s) {result['repaired_shards']} of {', '.join(result['damaged_arrays'])}")
    elif result["nothing_to_do"]:
        console.print(f"[green]store {cfg.store} is already complete: nothing to do[/]")
    else:
        n_rejected = len(result["rejected"])  # `samples` counts every input read, the rejected ones too
        console.print(f"cached {result['samples'] - n_rejected} samples in {result['shards']} shards "
                      f"({result['wall_s']:.1f} s) -> {cfg.store}"
                      + (f"; {n_rejected} input(s) rejected (listed below)" if n_rejected else ""))
    ch = result.get("changes")
    if ch and ch.get("changed"):
        console.print(f"source changed: {len(ch['changed'])} file(s) replaced since they were cached, cached "
                      f"again as version {fin.get('version')} (their old rows are retired)")
        for i in ch["changed"][:20]:
            console.print(f"[yellow]changed[/] {i}")
    if ch and (ch["added"] or ch["removed"]):
        console.print(f"source changed: {ch['added']} new sample(s) appended as version {fin.get('version')}"
                      + (f"; {len(ch['removed'])} sample(s) no longer in the source, "
                         + ("marked invalid (--prune)" if cfg.prune else "kept (--prune marks them invalid)")
                         if ch["removed"] else ""))
        for i in ch["removed"][:20]:
            console.print(f"[yellow]gone from the source[/] {i}")
    for r in result["rejected"]:
        console.print(f"[yellow]rejected[/] {r['uri']}: {r['reason']}")
    held = f"; the store holds {fin['n_valid']} valid samples, {fin['n_rejected']} rejected"
    console.print(f"status: {fin['status']}" + (held if fin["status"] == "complete" else ""))


@app.command()
def teachers():
    """List the teachers that `cache --teacher` accepts."""
    from distillkit.teachers import teacher_names

    for n in teacher_names():
        console.print(n)
