"""SIGKILL a real `distillkit cache` process at several moments; the rerun must finish with identical bytes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from conftest import BIN, REPO, assert_same_files, read_all

pytestmark = pytest.mark.slow

ARGS = ["--teacher", "dinov2_vits14_reg", "--image-size", "56", "--shard-size", "2", "--batch-size", "2",
        "--num-workers", "2", "--quiet"]


def _cmd(source: Path, store: Path, cfg: Path) -> list[str]:
    exe = BIN / "distillkit"
    base = [str(exe)] if exe.exists() else [sys.executable, "-m", "distillkit.cli"]
    return [*base, "cache", "--source", str(source), "--store", str(store), *ARGS, "--config", str(cfg)]


def _files(store: Path) -> dict[str, bytes]:
    """Every data object (chunks and shards); metadata documents hold timestamps and are compared as arrays."""
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*"))
            if p.is_file() and p.name not in ("zarr.json",)}


def _done(store: Path) -> int:
    try:
        return int(zarr.open_group(str(store), mode="r", use_consolidated=False)["progress/shard_done"][:].sum())
    except Exception:
        return -1


@pytest.fixture(scope="module")
def setup(photos, tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    cfg = root / "cfg.yaml"
    cfg.write_text("teachers:\n  - name: dinov2_vits14_reg\n    overrides: {depth: 2}\n")
    reference = root / "reference.zarr"
    subprocess.run(_cmd(photos, reference, cfg), check=True, capture_output=True, timeout=300)
    return root, cfg, reference


def _kill_when(cmd: list[str], store: Path, condition, timeout: float = 120.0) -> str:
    """SIGKILL the run once `condition()` holds. Returns "" if it was killed, else how it ended by itself (for the
    caller's assertion message: a run that ended first tested nothing)."""
    log = store.parent / f"{store.name}.stderr"
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                if condition():
                    break
                time.sleep(0.01)
        finally:
            alive = proc.poll() is None
            if alive:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return "" if alive else f"exit code {proc.returncode}; stderr ends: {log.read_text()[-1500:]}"


@pytest.mark.parametrize("moment", ["during_creation", "after_first_shard", "mid_run"])
def test_sigkill_then_rerun_gives_identical_store(setup, photos, moment):
    root, cfg, reference = setup
    store = root / f"killed_{moment}.zarr"
    cmd = _cmd(photos, store, cfg)
    if moment == "during_creation":
        condition = lambda: (store / "samples").exists()  # noqa: E731 - arrays being created, no manifest yet
    elif moment == "after_first_shard":
        condition = lambda: _done(store) >= 1  # noqa: E731
    else:
        condition = lambda: _done(store) >= 3  # noqa: E731
    ended = _kill_when(cmd, store, condition)
    done_at_kill = _done(store)
    assert not ended and done_at_kill < 6, f"the run was not killed, the test tested nothing: {ended}"
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    ref, got = read_all(reference), read_all(store)
    assert ref.keys() == got.keys()
    for k in ref:
        np.testing.assert_array_equal(ref[k], got[k], err_msg=k)
    assert_same_files(_files(reference), _files(store))
    g = zarr.open_group(str(store), mode="r")
    ids = g["samples/id"][:].tolist()
    assert len(ids) == len(set(ids)) == 12
    assert g.attrs["distillkit"]["status"] == "complete"
