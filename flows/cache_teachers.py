"""`cache-teachers`: plan and create the store once, cache shard ranges as tasks, finalize."""

from __future__ import annotations

import flows  # noqa: F401  (environment defaults before prefect)
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, \
    update_progress_artifact
from prefect.cache_policies import NO_CACHE

from distillkit.cache import cache_shards, finalize_store, prepare_store
from distillkit.config import CacheConfig
from flows.common import resolve_config


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
def finalize(cfg: CacheConfig) -> dict:
    return finalize_store(cfg)


@flow(name="cache-teachers", log_prints=True)
def cache_teachers(config: CacheConfig | None = None, config_file: str | None = None,
                   overrides: dict | None = None, parts: int = 1) -> dict:
    """Run the teachers once over `config.source` into `config.store`. Resumable; a complete store is a no-op.

    parts: split the pending shards into this many task runs (each owns whole shards).
    """
    log = get_run_logger()
    cfg = resolve_config(CacheConfig, config, config_file, overrides)
    plan = prepare(cfg)
    pending = plan["pending"]
    if not pending:
        log.info("store %s is complete: nothing to do", cfg.store)
        result = {"store": cfg.store, "nothing_to_do": True, "finalize": finalize(cfg), "rejected": []}
    else:
        progress_id = create_progress_artifact(0.0, description=f"shards cached into {cfg.store}")
        parts = max(1, min(parts, len(pending)))
        chunks = [pending[i::parts] for i in range(parts)]
        futures, before = [], 0
        for chunk in chunks:
            futures.append(cache_range.submit(cfg, chunk, progress_id, len(pending), before))
            before += len(chunk)
        results = [f.result() for f in futures]
        update_progress_artifact(progress_id, progress=100.0)
        rejected = [r for res in results for r in res["rejected"]]
        result = {"store": cfg.store, "nothing_to_do": False, "rejected": rejected,
                  "samples": sum(r["samples"] for r in results), "finalize": finalize(cfg)}
    fin = result["finalize"]
    create_table_artifact(key="cache-summary", table=[
        {"store": cfg.store, "teachers": ", ".join(t.name for t in cfg.teachers), "status": fin["status"],
         "samples": fin.get("n_samples"), "valid": fin.get("n_valid"), "rejected": fin.get("n_rejected")}],
        description="cache-teachers result")
    if result["rejected"]:
        create_table_artifact(key="cache-rejected", table=result["rejected"], description="inputs skipped")
    create_markdown_artifact(key="cache-next-steps", markdown=(
        f"Store `{cfg.store}` is **{fin['status']}**.\n\n"
        f"* inspect: `distillkit inspect {cfg.store}`\n* validate: `distillkit validate {cfg.store}`\n"
        f"* train: `distillkit train --store {cfg.store} --out runs/student`"))
    return result


if __name__ == "__main__":
    import sys

    cache_teachers(config_file=sys.argv[1])
