"""`align-scenes`: DUSt3R scenes into a scene store — plan and create the store once, then one task per scene
(pairs -> inference -> global alignment -> store), then finalize. Resumable per scene: a complete scene is
skipped; a scene whose pair outputs are stored is only re-aligned. Also run by `cache-teachers` (``scenes=``).
"""

from __future__ import annotations

import distillkit_flows  # noqa: F401  (environment defaults before prefect)
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, \
    update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from distillkit.config.scenes import SceneCacheConfig
from distillkit.scenes import pipeline
from distillkit_flows.common import resolve_config


@task(name="plan-scenes", cache_policy=NO_CACHE)
def plan(cfg: SceneCacheConfig) -> dict:
    p = pipeline.prepare(cfg)
    return {"pending": p.pending, "done": p.done, "scenes": p.manifest.scenes}


@task(name="align-scene", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def align_scene(cfg: SceneCacheConfig, scene: str, progress_id=None, total: int = 1) -> dict:
    result = pipeline.run_scene(cfg, scene)  # the network is loaded once per process and reused
    if progress_id is not None:
        from distillkit.scenes.store import done_flags, open_store

        done = int(done_flags(open_store(cfg.store, "r", cfg.storage_options))[1].sum())
        update_progress_artifact(progress_id, progress=100.0 * min(done, total) / max(total, 1))
    return result


@task(name="add-frames", cache_policy=NO_CACHE)
def add_frames_task(cfg: SceneCacheConfig, scene: str, frames: list[str]) -> dict:
    from distillkit.scenes.add import add_frames

    return add_frames(cfg, scene, frames)


@task(name="finalize-scenes", cache_policy=NO_CACHE)
def finalize_task(cfg: SceneCacheConfig) -> dict:
    return pipeline.finalize(cfg)


def _row(r: dict) -> dict:
    g = r.get("gt_metrics") or {}
    t = r.get("timings") or {}
    return {"scene": r["scene"], "frames": r.get("n_frames"), "pairs": r.get("n_edges"),
            "loss": round(r["loss"], 6) if "loss" in r else None,
            "GT point error cm (median)": round(g["point_err_cm_median"], 2) if "point_err_cm_median" in g else None,
            "inference s": round(t.get("inference_s", 0.0), 2), "align s": round(t.get("align_s", 0.0), 2),
            "total s": round(t.get("total_s", 0.0), 2)}


@flow(name="align-scenes", log_prints=True)
def align_scenes(config: SceneCacheConfig | None = None, config_file: str | None = None,
                 overrides: dict | None = None, parallel: int = 1, add: dict[str, list[str]] | None = None) -> dict:
    """DUSt3R pairs -> global alignment -> world-frame pointmaps for every scene of `config.source` into
    `config.store`. parallel: scenes aligned at the same time (threads; one network per process).
    add: ``{scene: [frame ids or image files of its source]}`` to add to already aligned scenes afterwards
    (pairs only for the new frames, re-aligned from the old poses; `distillkit align --add`)."""
    log = get_run_logger()
    cfg = resolve_config(SceneCacheConfig, config, config_file, overrides)
    planned = plan(cfg)
    pending = planned["pending"]
    results = []
    if not pending:
        log.info("scene store %s: every scene is done; nothing to do", cfg.store)
    else:
        progress_id = create_progress_artifact(100.0 * len(planned["done"]) / len(planned["scenes"]),
                                               description=f"scenes aligned into {cfg.store}")
        results = _run(cfg, pending, progress_id, len(planned["scenes"]), parallel)
        update_progress_artifact(progress_id, progress=100.0)
    added = [add_frames_task(cfg, scene, frames) for scene, frames in (add or {}).items()]
    fin = finalize_task(cfg)
    rows = [_row(r) for r in results if not r.get("skipped")]
    if rows:
        create_table_artifact(key="scenes-summary", table=rows, description="align-scenes: scenes done in this run")
    create_markdown_artifact(key="scenes-next-steps", markdown=(
        f"Scene store `{cfg.store}` is **{fin['status']}** ({len(planned['scenes'])} scenes).\n\n"
        f"* inspect: `distillkit inspect {cfg.store}`\n* validate: `distillkit validate {cfg.store}`\n"
        f"* point cloud: `distillkit export-ply {cfg.store} --scene {planned['scenes'][0]} --out scene.ply`\n"
        f"* images: `distillkit show {cfg.store} --scene {planned['scenes'][0]} --out views/`\n"
        f"* re-align from the stored pairs (no network): `distillkit align {cfg.store} --free-poses`"))
    if added:
        create_table_artifact(key="scenes-added-frames", table=[
            {k: r[k] for k in ("scene", "n_frames", "n_edges", "new_edges", "loss", "align_s")} for r in added],
            description="align-scenes: frames added to aligned scenes")
    return {"store": cfg.store, "nothing_to_do": not pending, "scenes": results, "finalize": fin, "added": added}


@flow(name="align-scene-tasks")
def run_pending(cfg: SceneCacheConfig, pending: list[str], progress_id=None, total: int = 1) -> list[dict]:
    """Subflow, so the number of scenes aligned at once can be chosen per run (`parallel`)."""
    futures = [align_scene.submit(cfg, s, progress_id, total) for s in pending]
    return [f.result() for f in futures]


def _run(cfg: SceneCacheConfig, pending: list[str], progress_id, total: int, parallel: int) -> list[dict]:
    runner = ThreadPoolTaskRunner(max_workers=max(1, parallel))
    return run_pending.with_options(task_runner=runner)(cfg, pending, progress_id, total)


if __name__ == "__main__":
    import sys

    align_scenes(config_file=sys.argv[1])
