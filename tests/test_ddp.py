"""torchrun with 2 CPU processes (gloo): each rank reads its own shards, every sample once per epoch, exact resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from conftest import BIN, REPO
from distillkit.training.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow


def _torchrun(cfg_file: Path, wait: bool = True):
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2",
           "-m", "distillkit.cli", "train", "--config", str(cfg_file)]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)


def _config(tmp: Path, store: Path, name: str, **kw) -> Path:
    cfg = {"stores": [str(store)], "out_dir": str(tmp / name), "batch_size": 2, "epochs": 6, "num_workers": 2,
           "shuffle_shards": 1, "ckpt_every": 2, "log_batches": True, "lr": 1e-3,
           "student": {"preset": "custom", "embed_dim": 32, "depth": 1, "num_heads": 2}, **kw}
    path = tmp / f"{name}.json"  # JSON is YAML
    path.write_text(json.dumps(cfg))
    return path


def _batches(out: Path) -> dict[int, list[dict]]:
    return {r: [json.loads(ln) for ln in (out / "batches" / f"rank{r}.jsonl").read_text().splitlines()]
            for r in (0, 1)}


def test_two_ranks_cover_every_sample_once_per_epoch_and_resume_exactly(cached_store, tmp_path):
    g = zarr.open_group(str(cached_store), mode="r")
    ids, valid, split = g["samples/id"][:].tolist(), g["samples/valid"][:], g["samples/split"][:]
    train_ids = sorted(i for i, v, s in zip(ids, valid, split) if v and s == 0)

    ref = _torchrun(_config(tmp_path, cached_store, "ref"))
    assert ref.returncode == 0, ref.stderr[-3000:]
    logs = _batches(tmp_path / "ref")
    epochs = {e["epoch"] for r in logs.values() for e in r}
    assert epochs == set(range(6))
    for epoch in epochs:
        per_rank = [[i for e in logs[r] if e["epoch"] == epoch for i in e["ids"]] for r in (0, 1)]
        assert sorted(per_rank[0] + per_rank[1]) == train_ids  # union = all training samples, exactly once
        shards = [{ids.index(i) // 4 for i in per_rank[r]} for r in (0, 1)]
        assert not shards[0] & shards[1]  # each rank reads its own shards

    cfg = _config(tmp_path, cached_store, "killed")
    proc = _torchrun(cfg, wait=False)
    ckpt = tmp_path / "killed" / "checkpoint-last.pt"
    deadline = time.monotonic() + 300
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    step_at_kill = load_checkpoint(ckpt)["position"]["step"]
    total = load_checkpoint(tmp_path / "ref" / "checkpoint-last.pt")["position"]["step"]
    assert step_at_kill < total, "training finished before the kill: nothing was tested"
    again = _torchrun(cfg)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _batches(tmp_path / "killed") == logs  # same samples, same ranks, same steps
    a = load_checkpoint(tmp_path / "ref" / "checkpoint-last.pt")["model"]
    b = load_checkpoint(ckpt)["model"]
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), rtol=1e-5, atol=1e-6, err_msg=k)
