"""`ablate-students`: a grid of scene-specific pointmap students (seed 000), one sub-flow per run and scene.

Every run reads the same scene data (a small JSON reference per scene, loaded once per process; see
`distillkit.scenes.refs.load_scene`). Result: a table artifact (`student-ablation`), `<out_dir>/ablation.csv` and
`<out_dir>/ablation.png` (loss curves and per-scene held-out error).

```python
from distillkit_flows.ablate_students import ablate_students
ablate_students(config={"out_dir": "runs/ablate", "scenes": [{"store": "s3://b/scenes.zarr", "scene": "apt1_kitchen"}],
                        "base": {"epochs": 200, "image_size": [384, 512]},
                        "grid": {"student.kind": ["cnn", "mobilenet", "vit"]},
                        "runs": [{"student.kind": "vit", "student.patch_size": 64}]})
```
"""

from __future__ import annotations

from pathlib import Path

import distillkit_flows  # noqa: F401  (environment defaults before prefect)
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from distillkit.training.pointmap.config import AblationConfig, PointmapTrainConfig
from distillkit.scenes.refs import load_scene
from distillkit.training.pointmap.ablation import (ABLATION_COLUMNS, ablation_row, expand_ablation, plot_ablation,
                                                   write_ablation_csv)
from distillkit.training.pointmap.trainer import train_pointmap_student
from distillkit_flows.common import resolve_config


@flow(name="train-pointmap-student", log_prints=True)
def train_pointmap_run(config: dict, scene: dict, run: str = "", label: str = "") -> dict:
    """One student on one scene (a sub-flow of `ablate-students`)."""
    data = load_scene(scene)
    cfg = PointmapTrainConfig.model_validate(config)
    res = train_pointmap_student(cfg, data)
    ev = res["final_eval"]
    get_run_logger().info("%s on %s: held-out mean L2 %.4f (%.2f%% of extent), %s%% within 10cm/10deg, %.0f s",
                          label or run, data.name, ev.get("mean_l2", float("nan")),
                          100 * ev.get("mean_l2_over_extent", float("nan")), ev.get("pct_10cm_10deg", "n/a"),
                          res["train_s"])
    return res


@flow(name="ablate-students", log_prints=True)
def ablate_students(config: AblationConfig | dict | None = None, config_file: str | None = None,
                    overrides: dict | None = None) -> dict:
    """Train every run of the grid on every scene; table artifact, CSV and PNG."""
    cfg = resolve_config(AblationConfig, config, config_file, overrides)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = expand_ablation(cfg.base, cfg.grid, cfg.runs, cfg.out_dir)
    log = get_run_logger()
    log.info("%d runs x %d scenes", len(runs), len(cfg.scenes))
    rows = []
    for run in runs:
        for spec in cfg.scenes:
            name = load_scene(spec).name
            run_cfg = dict(run["config"], out_dir=str(Path(run["config"]["out_dir"]) / name))
            res = train_pointmap_run.with_options(flow_run_name=f"{run['run']}-{name}")(
                config=run_cfg, scene=spec, run=run["run"], label=run["label"])
            rows.append(ablation_row(run, res))
    csv_path = write_ablation_csv(rows, out / "ablation.csv")
    png_path = plot_ablation(rows, out / "ablation.png")
    table = [{k: r[k] for k in ABLATION_COLUMNS if k != "metrics"} for r in rows]
    create_table_artifact(key="student-ablation", table=table,
                          description="pointmap students: held-out mean L2 (world units, / extent) and PnP pose")
    create_markdown_artifact(key="student-ablation-files", markdown=(
        f"{len(runs)} runs x {len(cfg.scenes)} scenes.\n\n* table: `{csv_path}`\n* plot: `{png_path}`"))
    return {"rows": rows, "csv": str(csv_path), "png": str(png_path), "runs": len(runs)}


if __name__ == "__main__":
    import sys

    ablate_students(config_file=sys.argv[1])
