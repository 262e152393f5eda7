"""Two caching runs on one store, a holder that died, and a full disk (real processes, a real tmpfs)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from conftest import read_all
from test_resume import _cmd, _done, _files, setup  # noqa: F401  (setup: the serial reference store)

from distillkit.store.lease import Lease, StoreBusy
from distillkit.stores import validate_store

pytestmark = pytest.mark.slow


def _lease_file(store: Path, pid: int, host: str | None = None, renewed: float | None = None) -> None:
    now = time.time()
    Path(f"{store}.lease").write_text(json.dumps({"host": host or socket.gethostname(), "pid": pid,
                                                  "run_id": uuid.uuid4().hex, "started": now,
                                                  "renewed": now if renewed is None else renewed}))


def test_lease_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    store = tmp_path / "s.zarr"
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        _lease_file(store, sleeper.pid)
        with pytest.raises(StoreBusy, match=rf"being cached by pid {sleeper.pid} on {socket.gethostname()}"):
            Lease(str(store)).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    with Lease(str(store)) as lease:  # the same holder, now dead: taken over at once
        assert json.loads(Path(f"{store}.lease").read_text())["run_id"] == lease.me.run_id
    assert not Path(f"{store}.lease").exists()  # released
    _lease_file(store, 1, host="gpu-box-7", renewed=time.time() - 1000)  # another host, silent for 1000 s
    with Lease(str(store), ttl_s=120):
        pass
    _lease_file(store, 1, host="gpu-box-7")  # another host, renewed just now: alive as far as we can tell
    with pytest.raises(StoreBusy, match="gpu-box-7"):
        Lease(str(store)).acquire()


def test_two_runs_started_together_give_the_serial_store(setup, photos):  # noqa: F811
    root, cfg, reference = setup
    store = root / "concurrent.zarr"
    cmd = _cmd(photos, store, cfg)
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    second = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outs = [p.communicate(timeout=300) for p in (first, second)]
    codes = [first.returncode, second.returncode]
    assert 0 in codes, outs
    pids = [first.pid, second.pid]
    for i, (code, (out, err)) in enumerate(zip(codes, outs)):
        if code:  # the loser names the run that holds the store
            assert f"is being cached by pid {pids[1 - i]}" in " ".join((out + err).split()), out + err
    ref, got = read_all(reference), read_all(store)
    for k in ref:
        np.testing.assert_array_equal(ref[k], got[k], err_msg=k)
    assert _files(reference) == _files(store)
    assert validate_store(str(store), deep=True) == []


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "tiny_disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_is_a_clear_error_and_a_rerun_completes(setup, photos, small_tmpfs):  # noqa: F811
    root, cfg, reference = setup
    store = small_tmpfs / "store.zarr"
    cmd = _cmd(photos, store, cfg)
    full = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    msg = " ".join((full.stdout + full.stderr).split())
    assert full.returncode != 0
    assert "no space left" in msg and "Traceback" not in full.stderr, msg
    done = _done(store)
    assert 0 <= done < 6, "the store fit: the disk was not full"
    if done > 0:  # every completed shard is intact: only the missing shards are problems
        problems = validate_store(str(store), deep=True)
        assert problems and all("not written" in p.what or "status" in p.what for p in problems), problems
    subprocess.run(["mount", "-o", "remount,size=20m", str(small_tmpfs)], check=True)
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    ref, got = read_all(reference), read_all(store)
    for k in ref:
        np.testing.assert_array_equal(ref[k], got[k], err_msg=k)
    assert _files(reference) == _files(store)
    assert os.path.exists(store) and not Path(f"{store}.lease").exists()
    shutil.rmtree(store)
