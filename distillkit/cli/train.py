"""`distillkit train`: the task (`--task` or the config file's `task:`) says which options apply, turns them into its
config, trains and reports; all of it comes from its entry in `distillkit.training.tasks` (no task is named here)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

import typer

from distillkit.cli.common import app, console, fail, setup_logging
from distillkit.students.pointmap import FAMILIES
from distillkit.training.tasks import DEFAULT_TASK, TASKS, OnStep, Report, Unit


@app.command()
def train(
    store: Optional[list[str]] = typer.Option(None, help="store(s) to stream (repeat to zip several); pointmap: the "
                                                         "scene store"),
    out: Optional[str] = typer.Option(None, help="output folder for checkpoints and metrics"),
    task: Optional[str] = typer.Option(None, help=" | ".join(
        f"{t.name}{' (default)' if t.name == DEFAULT_TASK else ''}: {t.summary}" for t in TASKS.values())),
    teacher: Optional[list[str]] = typer.Option(None, help="dune: subset of teachers (default: all)"),
    preset: Optional[str] = typer.Option(None, help="dune: student size vit_tiny | vit_small | vit_base"),
    depth: Optional[int] = typer.Option(None, help="dune: override the student depth"),
    embed_dim: Optional[int] = typer.Option(None, help="dune: override the student width"),
    heads: Optional[int] = typer.Option(None, help="dune: override the student heads"),
    projector: Optional[str] = typer.Option(None, help="dune: tp (transformer projector) | mlp"),
    student: Optional[str] = typer.Option(None, help="pointmap: small_cnn | paper_cnn | paper_mobilenet | paper_vit "
                                                     "| paper_vit_best (+ its 200 epochs, targets x100) or "
                                                     f"{' | '.join(FAMILIES)}; replaces the config file's student"),
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
    no_resume: bool = typer.Option(False, "--no-resume", help="start a new run even if --out holds a checkpoint "
                                                               "(by default a run resumes it, with its settings)"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML file with TrainConfig fields (or "
                                                                       "PointmapJobConfig fields with task: pointmap)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar or progress lines (the result still prints)"),
):
    """Train a DUNE-style student by streaming cached teacher features, or (--task pointmap) scene-specific
    pointmap students on a DUSt3R scene store."""
    setup_logging(quiet=quiet)
    from distillkit.config.common import merged_config_data, read_config_file, validate_config
    from distillkit.training.tasks import get_task

    common = dict(out_dir=out, task=task, batch_size=batch_size, epochs=epochs, max_steps=max_steps, lr=lr,
                  device=device, seed=seed, resume=False if no_resume else None)
    given = dict(teacher=teacher, preset=preset, depth=depth, embed_dim=embed_dim, heads=heads, projector=projector,
                 num_workers=num_workers, student=student, scene=scene, image_size=image_size,
                 max_minutes=max_minutes)
    try:
        chosen = get_task(task or read_config_file(config).get("task"), config)  # unknown: fails naming the file
        wrong = [f"--{k.replace('_', '-')}" for k, v in given.items() if v is not None and k not in chosen.options]
        if wrong:
            raise ValueError(f"{', '.join(wrong)} do not apply to --task {chosen.name}")
        data = merged_config_data(config, {**common, **chosen.overrides(store or [], given, common)})
        cfg = validate_config(chosen.config, resumed_settings(chosen, data, config), config)
        with progress_bars(quiet) as unit:
            result = chosen.run(cfg, unit)
    except ValueError as e:
        fail(str(e))
    show_report(chosen.report(cfg, result))


def resumed_settings(chosen, data: dict, config: Optional[Path]) -> dict:
    """`data` completed from the checkpoint in --out when the run resumes one (see `distillkit.training.resume`)."""
    from distillkit.training.resume import settings_for_resume

    return settings_for_resume(chosen.name, chosen.config, data, config)


@contextmanager
def progress_bars(quiet: bool = False) -> Iterator[Unit]:
    """A `Unit` that draws a progress bar per student (on a terminal)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), console=console,
                  disable=quiet or not console.is_terminal) as progress:
        def unit(name: str, train: Callable[[Optional[OnStep]], dict]) -> dict:
            bar = None  # made at the first report (under torchrun only rank 0 reports)

            def on_step(step: int, total: int, rec: dict) -> None:
                nonlocal bar
                if bar is None:
                    bar = progress.add_task(name, total=total, loss="-")
                progress.update(bar, completed=step, total=total, loss=f"{rec['loss']:.4g}")

            return train(on_step)

        yield unit


def show_report(report: Report) -> None:
    from rich.table import Table

    console.print(report.headline)
    if report.rows:
        t = Table(title=report.title)
        for c in report.columns:
            t.add_column(c)
        for r in report.rows:
            t.add_row(*[f"{r[c]:.4g}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in report.columns])
        console.print(t)
    for label, path in report.files.items():
        console.print(f"{label} {path}", soft_wrap=True)
