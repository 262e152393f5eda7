"""Scheduled retraining: train again only when a store's content changed, and keep the lineage.

Lineage lives in `<out_dir>/lineage.json`: one entry per training run with the identity (fingerprint, version,
finish time) of every store it read and the checkpoint it produced. A run fine-tunes from the latest checkpoint;
a run that crashed resumes in its own folder on the next call.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from distillkit_schemas.v1 import utcnow

from distillkit.training.dune.config import TrainConfig
from distillkit.store.layout import open_group
from distillkit_schemas import read_manifest
from distillkit.training.dune.trainer import train

log = logging.getLogger("distillkit")
LINEAGE = "lineage.json"


def store_identity(url: str, storage_options: dict | None = None) -> dict:
    m = read_manifest(open_group(url, "r", storage_options, consolidated=False))
    return {"status": m.status, "source_fingerprint": m.source_fingerprint, "version": m.version,
            "finished": m.finished, "n_valid": m.n_valid, "teachers": m.teachers}


def load_lineage(out_dir: str | Path) -> dict:
    path = Path(out_dir) / LINEAGE
    return json.loads(path.read_text()) if path.exists() else {"runs": []}


def _write_lineage(out_dir: Path, lineage: dict) -> None:
    tmp = out_dir / (LINEAGE + ".tmp")
    tmp.write_text(json.dumps(lineage, indent=1))
    os.replace(tmp, out_dir / LINEAGE)


def retrain(cfg: TrainConfig) -> dict:
    """Train a new version if any store changed since the last recorded run; otherwise do nothing and say so."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lineage = load_lineage(out)
    current = {url: store_identity(url, cfg.storage_options) for url in cfg.stores}
    incomplete = [u for u, ident in current.items() if ident["status"] != "complete"]
    if incomplete:
        msg = f"stores not complete yet: {incomplete}; not retraining"
        log.info(msg)
        return {"changed": False, "message": msg, "runs": len(lineage["runs"])}
    last = lineage["runs"][-1] if lineage["runs"] else None
    if last is not None and last["stores"] == current:
        msg = f"no store changed since run {last['run']} ({last['checkpoint']}); nothing to do"
        log.info(msg)
        return {"changed": False, "message": msg, "runs": len(lineage["runs"]), "checkpoint": last["checkpoint"]}
    run = len(lineage["runs"]) + 1
    run_dir = out / f"run-{run:03d}"
    init_from = last["checkpoint"] if last else cfg.init_from
    why = "first run" if last is None else "stores changed: " + ", ".join(
        u for u in current if last["stores"].get(u) != current[u])
    log.info("retraining run %d (%s)%s", run, why, f", fine-tuning from {init_from}" if init_from else "")
    result = train(cfg.model_copy(update={"out_dir": str(run_dir), "init_from": init_from, "resume": True}))
    entry = {"run": run, "checkpoint": result["checkpoint"], "init_from": init_from, "stores": current,
             "finished": utcnow(), "steps": result["steps"], "final_eval": result["final_eval"], "reason": why}
    lineage["runs"].append(entry)
    _write_lineage(out, lineage)
    return {"changed": True, "message": f"run {run}: {why}", "runs": run, **result}
