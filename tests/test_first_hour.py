"""A new user's first hour: what the demo tells them to run next runs, and a resumed run takes its settings from
its checkpoint (a flag that contradicts it is refused by name, never a traceback)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import BIN
from distillkit_flows.demo import next_commands

ENV = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "COLUMNS": "200"}
TINY = ["--preset", "custom", "--embed-dim", "32", "--depth", "2", "--heads", "2", "--batch-size", "3",
        "--num-workers", "0", "--lr", "0.002"]


def _run(argv: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    exe = [str(BIN / argv[0]), *argv[1:]]
    return subprocess.run(exe, capture_output=True, text=True, timeout=timeout, env=ENV)


@pytest.fixture(scope="module")
def first_run(cached_store, tmp_path_factory):
    """The demo's situation: a store and a student trained for a few steps with non-default settings."""
    out = tmp_path_factory.mktemp("first") / "student"
    proc = _run(["distillkit", "train", "--store", str(cached_store), "--out", str(out), "--max-steps", "4", *TINY])
    assert proc.returncode == 0, proc.stderr
    return cached_store, out


def test_demo_next_commands_run(first_run):
    store, out = first_run
    for argv, why in next_commands(str(store), str(out)):
        proc = _run(argv)
        assert proc.returncode == 0, f"{argv} ({why}) failed: {proc.stderr[-2000:]}"
        assert "Traceback" not in proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    steps = [r["step"] for r in metrics["train"]]
    assert steps[:4] == [1, 2, 3, 4] and steps[-1] > 4  # resumed after step 4, not restarted
    assert metrics["config"]["student"]["depth"] == 2 and metrics["config"]["batch_size"] == 3  # the checkpoint's


@pytest.mark.parametrize("flags, named", [
    (["--batch-size", "5"], "--batch-size 5 (checkpoint: 3)"),
    (["--depth", "4", "--projector", "mlp"], "--depth 4 (checkpoint: 2); --projector mlp (checkpoint: tp)"),
])
def test_resume_refuses_contradicting_flags_by_name(first_run, flags, named):
    store, out = first_run
    before = (out / "checkpoint-last.pt").stat().st_mtime_ns
    proc = _run(["distillkit", "train", "--store", str(store), "--out", str(out), "--max-steps", "30", *flags])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    msg = " ".join(proc.stderr.split())
    assert named in msg and "checkpoint-last.pt" in msg and "--no-resume" in msg
    assert "Traceback" not in proc.stderr
    assert (out / "checkpoint-last.pt").stat().st_mtime_ns == before  # nothing trained, nothing rewritten


def test_resume_takes_unchanged_flags(first_run):
    store, out = first_run
    same = _run(["distillkit", "train", "--store", str(store), "--out", str(out), "--max-steps", "80",
                 "--depth", "2", "--batch-size", "3", "--quiet"])  # given and equal to the checkpoint's: fine
    assert same.returncode == 0, same.stderr
    assert "trained" in same.stdout and f"{out.name}: step" not in same.stderr  # --quiet: the result, no progress
    assert "--no-no-resume" not in _run(["distillkit", "train", "--help"]).stdout


def test_long_commands_print_progress_lines_in_logs(tmp_path):
    """Not a terminal (a log file, CI): plain progress lines, each with done/total; --quiet: none."""
    argv = ["distillkit", "synth-scenes", str(tmp_path / "d"), "--frames", "5", "--color", "48x64", "--depth",
            "24x32"]
    proc = _run(argv)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("synth-scenes: ")]
    assert len(lines) >= 2 and lines[-1].startswith("synth-scenes: 5/5 frames (100%)")
    assert "\r" not in proc.stderr  # no redrawn bar in a log
    quiet = _run([*argv[:2], str(tmp_path / "q"), *argv[3:], "--quiet"])
    assert quiet.returncode == 0 and "synth-scenes: " not in quiet.stderr
