"""`distillkit train`: the task (`--task` or the config file's `task:`) picks the options that apply and the runner;
the tasks and their options are registered in `distillkit.training.tasks`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from distillkit.cli.common import app, console, fail, setup_logging
from distillkit.students.pointmap import FAMILIES


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
    no_resume: bool = typer.Option(False, help="start fresh even if a checkpoint exists"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML file with TrainConfig fields (or "
                                                                       "PointmapJobConfig fields with task: pointmap)"),
):
    """Train a DUNE-style student by streaming cached teacher features, or (--task pointmap) scene-specific
    pointmap students on a DUSt3R scene store."""
    setup_logging()
    from distillkit.config.common import read_config_file
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
        RUNNERS[chosen.name](config, common, store or [], given)
    except ValueError as e:
        fail(str(e))


def _train_dune(config: Path | None, common: dict, stores: list[str], o: dict) -> None:
    from distillkit.training.dune.trainer import train as run_train
    from distillkit.training.tasks import load_train_config

    dune = None
    if any(o[k] is not None for k in ("preset", "depth", "embed_dim", "heads")):
        dune = {k: v for k, v in {"preset": o["preset"], "depth": o["depth"], "embed_dim": o["embed_dim"],
                                  "num_heads": o["heads"]}.items() if v is not None}
    cfg = load_train_config(config, **common, stores=stores or None, teachers=o["teacher"] or None, student=dune,
                            projector=o["projector"], num_workers=o["num_workers"])
    result = run_train(cfg)
    console.print(f"trained {result['steps']} steps in {result['wall_s']:.1f} s; loss {result['first_loss']:.4f} "
                  f"-> {result['last_loss']:.4f}")
    for t, v in result["final_eval"].items():
        if isinstance(v, dict):
            console.print(f"  held-out {t}: " + ", ".join(f"{k} {x:.4f}" if isinstance(x, float) else f"{k} {x}"
                                                        for k, x in v.items()))
    console.print(f"checkpoint {result['checkpoint']}\nmetrics {result['metrics']}\nloss curve {result['loss_curve']}")


def _train_pointmap(config: Path | None, common: dict, stores: list[str], o: dict) -> None:
    from distillkit.training.tasks import load_train_config

    if len(stores) > 1:
        raise ValueError("--task pointmap reads one scene store: give --store once")
    cfg = load_train_config(config, **{**common, "store": (stores or [None])[0], "scenes": o["scene"] or None,
                                       "image_size": o["image_size"], "max_minutes": o["max_minutes"],
                                       **_pointmap_student_overrides(o["student"], common)})
    _print_pointmap(cfg)


RUNNERS = {"dune": _train_dune, "pointmap": _train_pointmap}  # one per task of distillkit.training.tasks


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


def _print_pointmap(cfg) -> None:
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
