"""`cache-teachers`: plan and create the store once, cache shard ranges as tasks, finalize.

Scale-out, each writer owning whole shards (so the result is byte-identical to a serial run):
* `parts=N` splits the pending shards into N task runs (threads by default, `runner="dask"` for a local Dask
  cluster of processes: the teacher is then loaded once per Dask worker process);
* `fanout="cache-teachers/<deployment>"` launches one flow run of that deployment per shard range (on any worker
  of its pool) with an idempotency key per range, waits for them, then finalizes.
"""

from __future__ import annotations

import hashlib
import time
from typing import Literal

import distillkit_flows  # noqa: F401  (environment defaults before prefect)
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, \
    update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import get_run_context

from distillkit.features.pipeline import cache_shards, prepare_store
from distillkit.store.finalize import finalize_store
from distillkit.store.lease import Lease
from distillkit.config.cache import CacheConfig
from distillkit.config.scenes import SceneCacheConfig
from distillkit_flows.common import resolve_config


@task(name="prepare-store", cache_policy=NO_CACHE)
def prepare(cfg: CacheConfig) -> dict:
    p = prepare_store(cfg)
    return {"pending": p.pending, "n_shards": p.manifest.n_shards, "n_samples": p.manifest.n_samples}


@task(name="cache-shards", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def cache_range(cfg: CacheConfig, shards: list[int], progress_id=None, total: int = 1, done_before: int = 0) -> dict:
    prepared = prepare_store(cfg.model_copy(update={"shards": shards}))  # teacher reused: loaded once per process

    def on_shard(done: int, _n: int) -> None:
        if progress_id is not None:
            update_progress_artifact(progress_id, progress=100.0 * (done_before + done) / max(total, 1))

    return cache_shards(cfg, prepared, on_shard=on_shard, show_progress=False)


@task(name="finalize-store", cache_policy=NO_CACHE)
def finalize_task(cfg: CacheConfig) -> dict:
    return finalize_store(cfg)


def split(pending: list[int], parts: int) -> list[list[int]]:
    """Contiguous shard ranges, as even as possible."""
    parts = max(1, min(parts, len(pending)))
    size, extra = divmod(len(pending), parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + size + (i < extra)
        out.append(pending[start:stop])
        start = stop
    return out


@flow(name="cache-shards")
def cache_pending(cfg: CacheConfig, chunks: list[list[int]]) -> list[dict]:
    """Subflow so that the task runner (threads or Dask) can be chosen per run."""
    total = sum(len(c) for c in chunks)
    progress_id = create_progress_artifact(0.0, description=f"shards cached into {cfg.store}")
    futures, before = [], 0
    for chunk in chunks:
        futures.append(cache_range.submit(cfg, chunk, progress_id, total, before))
        before += len(chunk)
    results = [f.result() for f in futures]
    update_progress_artifact(progress_id, progress=100.0)
    return results


def _dask_runner(workers: int):
    from prefect_dask import DaskTaskRunner

    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": ":0"})


def _fan_out(cfg: CacheConfig, chunks: list[list[int]], deployment: str) -> list[dict]:
    """One flow run of `deployment` per shard range; the key makes a retried parent reuse, not duplicate, them."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    log = get_run_logger()
    parent = str(get_run_context().flow_run.id)
    runs = []
    for chunk in chunks:
        key = hashlib.sha256(f"{parent}|{cfg.store}|{chunk}".encode()).hexdigest()[:40]
        params = {"config": cfg.model_dump(mode="json") | {"shards": chunk}, "finalize": False}
        runs.append(run_deployment(deployment, parameters=params, timeout=0, idempotency_key=key, as_subflow=True))
        log.info("launched %s for shards %d..%d", runs[-1].name, chunk[0], chunk[-1])
    with get_client(sync_client=True) as client:
        while True:
            states = [client.read_flow_run(r.id).state for r in runs]
            if all(s is not None and s.is_final() for s in states):
                break
            time.sleep(1.0)
    failed = [r.name for r, s in zip(runs, states) if not s.is_completed()]
    if failed:
        raise RuntimeError(f"fan-out runs did not complete: {failed}; rerun to redo their shards")
    return [{"samples": 0, "rejected": []} for _ in runs]


def _align_scenes(scenes: SceneCacheConfig | dict | str) -> dict:
    """The DUSt3R scenes part: the `align-scenes` flow as a sub-flow (a config, its fields, or a YAML path)."""
    from distillkit_flows.align_scenes import align_scenes

    if isinstance(scenes, str):
        return align_scenes(config_file=scenes)
    return align_scenes(config=scenes)


@flow(name="cache-teachers", log_prints=True)
def cache_teachers(config: CacheConfig | None = None, config_file: str | None = None,
                   overrides: dict | None = None, parts: int = 1, runner: Literal["threads", "dask"] = "threads",
                   fanout: str | None = None, finalize: bool = True,
                   scenes: SceneCacheConfig | dict | str | None = None) -> dict:
    """Run the teachers once over `config.source` into `config.store`. Resumable; a complete store is a no-op.

    parts: split the pending shards into this many ranges; runner: where ranges run in this flow run ("dask":
    a local cluster of `parts` processes); fanout: instead launch one run of this deployment per range;
    finalize: merge statistics and mark the store complete at the end (fan-out children skip it).
    scenes: DUSt3R scenes (SceneCacheConfig, its fields, or a YAML path) run as the `align-scenes` sub-flow into
    their own scene store, after the features; alone (no config/config_file) only the scenes run.
    """
    log = get_run_logger()
    if scenes is not None and config is None and config_file is None:  # scene stores only
        return {"scenes": _align_scenes(scenes)}
    cfg = resolve_config(CacheConfig, config, config_file, overrides)
    # a top-level run holds the store's lease (a second run on it refuses, naming this one); fan-out children don't
    lease = Lease(cfg.store, cfg.storage_options).acquire() if finalize and cfg.shards is None else None
    try:
        return _cache(cfg, parts, runner, fanout, finalize, scenes, log)
    finally:
        if lease is not None:
            lease.release()


def _cache(cfg: CacheConfig, parts: int, runner: str, fanout: str | None, finalize: bool, scenes, log) -> dict:
    plan = prepare(cfg)
    pending = plan["pending"]
    rejected, samples = [], 0
    if not pending:
        log.info("store %s: all requested shards are done; nothing to do", cfg.store)
    else:
        chunks = split(pending, parts)
        if fanout:
            results = _fan_out(cfg, chunks, fanout)
        elif runner == "dask":
            results = cache_pending.with_options(task_runner=_dask_runner(len(chunks)))(cfg, chunks)
        else:
            results = cache_pending(cfg, chunks)
        rejected = [r for res in results for r in res["rejected"]]
        samples = sum(r["samples"] for r in results)
    fin = finalize_task(cfg) if finalize else {"status": "not finalized (fan-out child)"}
    result = {"store": cfg.store, "nothing_to_do": not pending, "rejected": rejected, "samples": samples,
              "finalize": fin}
    create_table_artifact(key="cache-summary", table=[
        {"store": cfg.store, "teachers": ", ".join(t.name for t in cfg.teachers), "status": fin["status"],
         "samples": fin.get("n_samples"), "valid": fin.get("n_valid"), "rejected": fin.get("n_rejected")}],
        description="cache-teachers result")
    if rejected:
        create_table_artifact(key="cache-rejected", table=rejected, description="inputs skipped")
    create_markdown_artifact(key="cache-next-steps", markdown=(
        f"Store `{cfg.store}` is **{fin['status']}**.\n\n"
        f"* inspect: `distillkit inspect {cfg.store}`\n* validate: `distillkit validate {cfg.store}`\n"
        f"* train: `distillkit train --store {cfg.store} --out runs/student`"))
    if scenes is not None:
        result["scenes"] = _align_scenes(scenes)
    # the last log line: what `prefect deployment run ... --watch` shows of the result
    log.info("store %s is %s: %s valid samples, %s input(s) rejected; next: distillkit inspect %s", cfg.store,
             fin["status"], fin.get("n_valid", "?"), fin.get("n_rejected", "?"), cfg.store)
    return result


if __name__ == "__main__":
    import sys

    cache_teachers(config_file=sys.argv[1])
