"""`distillkit eval-reloc`: relocalisation of pointmap students by the ACE / DSAC* protocol, per scene and mean."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.table import Table

from distillkit.cli.common import app, console, fail, setup_logging

COLUMNS = (("pct_10cm_5deg", "10cm/5°"), ("pct_5cm_5deg", "5cm/5°"), ("pct_2cm_2deg", "2cm/2°"),
           ("pct_1cm_1deg", "1cm/1°"))


@app.command("eval-reloc")
def eval_reloc(
    store: str = typer.Option(..., help="scene store the students were trained on (local path or fsspec URL)"),
    checkpoint: list[str] = typer.Option(..., help="student checkpoint, or a run folder (every "
                                                   "<scene>/checkpoint-last.pt); repeat for several"),
    protocol: str = typer.Option("ace", help="ace: DSAC* RANSAC, 64 hypotheses, 10 px inlier threshold, alpha 100, "
                                             "100 px max error, at 480 px height (scaled to the student's)"),
    reference: str = typer.Option("auto", help="ground truth: dslam (the dataset's poses) | aligned (DUSt3R's "
                                               "aligned poses) | auto (dslam where the store has it)"),
    ransac: str = typer.Option("dsac", help="dsac (DSAC*'s algorithm on OpenCV P3P / iterative PnP) | opencv "
                                            "(cv2.solvePnPRansac with the same threshold and hypotheses)"),
    stride: Optional[int] = typer.Option(None, help="sample the student's dense output every N pixels (default: "
                                                    "ACE's 8 px at 480 px height, scaled and rounded)"),
    device: str = typer.Option("cpu"),
    as_json: bool = typer.Option(False, "--json", help="print the results as JSON"),
    per_frame: bool = typer.Option(False, "--per-frame",
                                   help="with --json: keep the per-frame errors and inlier counts"),
):
    """Relocalise every test frame of each checkpoint's scene; ACE's metrics (% within 10cm/5°, 5cm/5°, 2cm/2°,
    1cm/1°, median errors) per scene and averaged, the ground truth used, and the paper's mean L2."""
    setup_logging()
    from distillkit.training.pointmap.evaluate import reloc_checkpoints

    try:
        res = reloc_checkpoints(store, checkpoint, reference, protocol, stride, ransac, device=device)
    except (ValueError, FileNotFoundError, KeyError) as e:
        fail(str(e))
    if not per_frame:
        for row in res["scenes"]:
            for k in [k for k in row if k.startswith("per_frame")]:
                del row[k]
    if as_json:
        print(json.dumps(res, indent=1))
        return
    first = res["scenes"][0]
    t = Table(title=f"relocalisation, {protocol} protocol ({ransac} RANSAC, {first['image_hw'][0]}x"
                    f"{first['image_hw'][1]}: inlier {first['inlier_px']:g} px, stride {first['stride_px']} px)")
    for col in ("scene", "student", "ground truth", "frames", *(c for _, c in COLUMNS), "median", "mean L2 (world)"):
        t.add_column(col, justify="left" if col in ("scene", "student", "ground truth") else "right")

    def cells(r: dict) -> list[str]:
        return [*(f"{r[k]:.1f} %" for k, _ in COLUMNS), f"{r['median_t_cm']:.2f} cm {r['median_r_deg']:.2f}°",
                f"{r['mean_l2']:.4f}" if r.get("mean_l2") is not None else "-"]

    for r in res["scenes"]:
        t.add_row(r["scene"], r["student"], r["ground_truth"], str(r["frames"]), *cells(r))
    t.add_row("[bold]mean[/]", "", "", str(res["mean"]["frames"]), *cells(res["mean"]))
    console.print(t)
    for r in res["scenes"]:
        console.print(f"{r['scene']}: ground truth = {r['ground_truth_note']}")
