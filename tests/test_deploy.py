"""The team setup for real: `prefect server start` (SQLite) + work pool + `prefect deploy` + a process worker."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image

from conftest import BIN, REPO, TINY_TEACHER, _free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PREFECT = str(BIN / "prefect")


def _stop(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM the process group, then SIGKILL (a Prefect 3.8 worker ignores the first signal)."""
    if proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    # no DISTILL_ROOT anywhere: neither `make deploy` nor the worker (started elsewhere) needs it
    env = {**{k: v for k, v in os.environ.items() if k != "DISTILL_ROOT"},
           "PREFECT_HOME": str(home), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_SERVER_UI_ENABLED": "false",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "PREFECT_LOGGING_LEVEL": "INFO",
           "DISTILLKIT_CACHE": str(home / "cache"), "COLUMNS": "250"}
    server = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                              stdout=open(home / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    worker = None
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
                break
            except Exception:
                assert time.monotonic() < deadline and server.poll() is None, (home / "server.log").read_text()
                time.sleep(0.5)

        def cli(*args, timeout=180):
            return subprocess.run([PREFECT, "--no-prompt", *args], env=env, cwd=REPO, capture_output=True,
                                  text=True, timeout=timeout)

        r = subprocess.run(["make", "-s", "deploy"], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr  # the documented command, verbatim
        worker_log = home / "worker.log"
        worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "gpu", "--name", "test-worker"], env=env,
                                  cwd=home, stdout=open(worker_log, "w"), stderr=subprocess.STDOUT,
                                  start_new_session=True)
        deadline = time.monotonic() + 60
        while "started" not in worker_log.read_text():
            assert time.monotonic() < deadline and worker.poll() is None, worker_log.read_text()
            time.sleep(0.5)
        yield {"cli": cli, "env": env, "home": home}
    finally:
        if worker is not None:
            _stop(worker)
        _stop(server)


def _run(stack, name: str, params: dict, *extra: str) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    r = stack["cli"]("deployment", "run", name, "--params", json.dumps(params), *extra, "--watch", "--watch-timeout",
                     "300", timeout=360)
    return r, time.perf_counter() - t0


def test_plain_prefect_deploy_runs_complete_without_distill_root(stack, tmp_path):
    """The Prefect command itself, verbatim from the repo root, no DISTILL_ROOT: the runs find the checkout."""
    r = subprocess.run([PREFECT, "deploy", "--all", "--prefect-file", "deploy/prefect.yaml"], env=stack["env"],
                       cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0 and "DISTILL_ROOT" not in stack["env"], r.stdout + r.stderr
    src = tmp_path / "imgs"
    src.mkdir()
    for i in range(3):
        Image.fromarray(np.full((40, 50, 3), 60 * i, np.uint8)).save(src / f"{i}.png")
    store = tmp_path / "plain.zarr"
    # the deployment's default config_file (deploy/configs/...) resolves only in the checkout
    params = {"overrides": {"source": str(src), "store": str(store), "teachers": [TINY_TEACHER], "image_size": 56,
                            "shard_size": 4}}
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    line = "DISTILL_ROOT=/nonexistent on this worker is not a distillkit checkout"
    with temporary_settings(updates={PREFECT_API_URL: stack["env"]["PREFECT_API_URL"]}):
        run = run_deployment("cache-teachers/demo", parameters=params, timeout=300)
        assert run.state.is_completed(), run.state
        assert zarr.open_group(str(store), mode="r").attrs["distillkit"]["n_valid"] == 3
        # a worker environment pointing elsewhere: the run fails, and its state and log say in one line what to set
        run = run_deployment("cache-teachers/demo", parameters=params, timeout=180,
                             job_variables={"env": {"DISTILL_ROOT": "/nonexistent"}})
        assert run.state.is_failed() and line in run.state.message, run.state
        assert "set DISTILL_ROOT to the repository root" in run.state.message
        with get_client(sync_client=True) as client:
            deadline = time.monotonic() + 30  # logs reach the API in batches
            while not any(line in log.message for log in client.read_logs(
                    LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))):
                assert time.monotonic() < deadline, "the reason never reached the flow run's log"
                time.sleep(0.5)


def test_enter_checkout_finds_the_code_or_names_what_to_set(monkeypatch, tmp_path):
    """The pull step's order: DISTILL_ROOT on the worker, the deploying checkout, the installed package's checkout."""
    import distillkit_flows.common as common

    monkeypatch.delenv("DISTILL_ROOT", raising=False)
    assert common.enter_checkout(str(REPO)) == {"directory": str(REPO)}
    assert common.enter_checkout("/not/on/this/worker") == {"directory": str(REPO)}  # pip install -e checkout
    assert common.enter_checkout("{{ checkout.stdout }}") == {"directory": str(REPO)}  # no build step ran
    monkeypatch.setattr(common, "__file__", str(tmp_path / "site-packages/distillkit_flows/common.py"))
    assert common.enter_checkout(str(REPO)) == {"directory": str(REPO)}
    with pytest.raises(FileNotFoundError, match="set DISTILL_ROOT to the repository root in the worker's env"):
        common.enter_checkout("/not/on/this/worker")
    monkeypatch.setenv("DISTILL_ROOT", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"DISTILL_ROOT={tmp_path} on this worker is not a distillkit"):
        common.enter_checkout(str(REPO))
    monkeypatch.setenv("DISTILL_ROOT", str(REPO))
    assert common.enter_checkout("/elsewhere") == {"directory": str(REPO)}


def test_deployments_run_cache_then_train(stack, tmp_path):
    store = tmp_path / "deployed.zarr"
    # the demo deployment's own defaults (photographs, full DINOv2 ViT-S/14-reg at 224), only the store moved
    r, _ = _run(stack, "cache-teachers/demo", {"overrides": {"store": str(store)}})
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "Completed" in out, out
    from distillkit.stores import validate_store

    assert validate_store(str(store)) == []
    manifest = zarr.open_group(str(store), mode="r").attrs["distillkit"]
    assert manifest["source"] == "skimage:" and manifest["n_valid"] == 76
    r, warm = _run(stack, "cache-teachers/demo", {"overrides": {"store": str(store)}})
    assert r.returncode == 0 and "Completed" in r.stdout + r.stderr
    print(f"warm no-op deployment run end to end: {warm:.1f} s")
    r, _ = _run(stack, "train-student/demo", {"overrides": {
        "stores": [str(store)], "out_dir": str(tmp_path / "student"), "max_steps": 4, "num_workers": 0,
        "student": {"preset": "custom", "embed_dim": 32, "depth": 1, "num_heads": 2}}})
    assert r.returncode == 0 and "Completed" in r.stdout + r.stderr, r.stdout + r.stderr
    assert (tmp_path / "student" / "checkpoint-last.pt").exists()


def test_nightly_schedule_and_gpu_pool_template(stack):
    r = stack["cli"]("deployment", "inspect", "retrain-student/nightly")
    assert r.returncode == 0, r.stderr
    assert "0 3 * * *" in r.stdout and "Europe/Berlin" in r.stdout
    tpl = REPO / "deploy/k8s/gpu-job-template.json"
    assert "nvidia.com/gpu" in tpl.read_text()
    r = stack["cli"]("work-pool", "create", "k8s-gpu", "--type", "kubernetes", "--base-job-template", str(tpl),
                     "--overwrite")
    assert r.returncode == 0, r.stdout + r.stderr


def test_fan_out_over_deployment_runs_is_byte_identical(stack, tmp_path, monkeypatch):
    from conftest import read_all
    from distillkit.cache import run_cache
    from distillkit.config.cache import CacheConfig

    common = {"teachers": [TINY_TEACHER], "image_size": 56, "shard_size": 8}
    fanned = tmp_path / "fanned.zarr"
    r, _ = _run(stack, "cache-teachers/demo", {"overrides": {"store": str(fanned), **common},
                                                "fanout": "cache-teachers/demo", "parts": 3})
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "Completed" in out, out
    runs = stack["cli"]("flow-run", "ls", "--flow-name", "cache-teachers", "--limit", "50")
    assert runs.stdout.count("COMPLETED") >= 4, runs.stdout  # the parent and its 3 children (plus earlier runs)
    monkeypatch.setenv("DISTILLKIT_CACHE", stack["env"]["DISTILLKIT_CACHE"])  # same photo folder, same uris
    serial = tmp_path / "serial.zarr"
    cfg = CacheConfig(source="skimage:", store=str(serial), val_fraction=0.1, batch_size=16, **common)
    run_cache(cfg, show_progress=False)
    a, b = read_all(serial), read_all(fanned)
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] == b[k]).all() or (a[k].dtype.kind == "f" and ((a[k] == b[k]) | (a[k] != a[k])).all()), k
