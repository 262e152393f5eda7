"""One caching run per store at a time: a lease object beside the store, renewed while the run lives.

A second `distillkit cache` on the same store (another GPU box, or a retry while the first run is still alive)
refuses with a message naming the holder (host, pid, start time). A holder that died (SIGKILL, power loss) stops
renewing; its lease is taken over once it is older than `ttl_s`, or at once when the holder was on this host and
its process is gone. The lease lives next to the store (`<store>.lease`), never inside it, so creating the store
cannot remove it.

Local paths use an exclusive create (O_EXCL) and an atomic rename to take over a stale lease. Object stores have
no exclusive create through fsspec: the lease is written, then read back after a short pause, and the run
refuses if another run's lease is what it reads (two runs starting within that pause are the remaining race).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec

log = logging.getLogger("distillkit")

TTL_S = 120.0
RENEW_S = 10.0


class StoreBusy(RuntimeError):
    """Another live run holds the store's lease."""


@dataclass
class Holder:
    host: str
    pid: int
    run_id: str
    started: float
    renewed: float

    def describe(self) -> str:
        age = time.time() - self.renewed
        return (f"pid {self.pid} on {self.host} (run {self.run_id[:8]}, started "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.started))}, renewed {age:.0f} s ago)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(h: Holder, ttl_s: float, now: float | None = None) -> bool:
    now = time.time() if now is None else now
    if h.host == socket.gethostname() and not _alive(h.pid):
        return True
    return now - h.renewed > ttl_s


class Lease:
    """Context manager: `with Lease(store_url): ...` holds the store for this process."""

    def __init__(self, store: str, storage_options: dict[str, Any] | None = None, ttl_s: float = TTL_S):
        self.url = store.rstrip("/") + ".lease"
        self.ttl_s = ttl_s
        self.me = Holder(socket.gethostname(), os.getpid(), uuid.uuid4().hex, time.time(), time.time())
        self.fs, self.path = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        self.local = isinstance(self.fs, fsspec.implementations.local.LocalFileSystem)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- reading / writing the lease object ----------------------------------------------------------------
    def _payload(self) -> bytes:
        self.me.renewed = time.time()
        return json.dumps(self.me.__dict__).encode()

    def read(self) -> Holder | None:
        try:
            with self.fs.open(self.path, "rb") as f:
                return Holder(**json.loads(f.read()))
        except (FileNotFoundError, ValueError, TypeError, KeyError):
            return None

    def _create_exclusive(self) -> bool:
        if self.local:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(self._payload())
            return True
        if self.fs.exists(self.path):
            return False
        self.fs.pipe_file(self.path, self._payload())
        time.sleep(0.5)  # whoever wrote last wins; the loser sees the other's run id and refuses
        held = self.read()
        return held is not None and held.run_id == self.me.run_id

    def _take_over(self, stale: Holder) -> bool:
        if self.local:  # only one contender's rename of the stale lease succeeds
            grave = f"{self.path}.stale.{self.me.run_id}"
            try:
                os.rename(self.path, grave)
            except FileNotFoundError:
                return False
            os.unlink(grave)
        else:
            self.fs.rm(self.path)
        return self._create_exclusive()

    # ---- acquire / renew / release -------------------------------------------------------------------------
    def acquire(self) -> "Lease":
        for _ in range(3):
            if self._create_exclusive():
                break
            held = self.read()
            if held is None:  # half-written by a holder that is creating it right now, or gone meanwhile
                time.sleep(0.2)
                continue
            if held.run_id == self.me.run_id:
                break
            if not is_stale(held, self.ttl_s):
                raise StoreBusy(f"store {self.url[:-len('.lease')]} is being cached by {held.describe()}; "
                                f"wait for it to finish (or stop it). A holder that died is taken over after "
                                f"{self.ttl_s:.0f} s without renewal (lease {self.url}).")
            if self._take_over(held):
                log.warning("took over the lease of %s: its holder stopped renewing",
                                                        held.describe())
                break
        else:
            raise StoreBusy(f"could not acquire the lease {self.url}")
        self._thread = threading.Thread(target=self._renew, name="distillkit-lease", daemon=True)
        self._thread.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_S):
            try:
                held = self.read()
                if held is None or held.run_id != self.me.run_id:
                    return  # taken over (we were presumed dead): the writer's own checks stop us
                self._write()
            except OSError:
                pass

    def _write(self) -> None:
        if self.local:  # atomic: a contender never reads a half-written lease
            tmp = f"{self.path}.{self.me.run_id}.tmp"
            with open(tmp, "wb") as f:
                f.write(self._payload())
            os.replace(tmp, self.path)
        else:
            self.fs.pipe_file(self.path, self._payload())

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        held = self.read()
        if held is not None and held.run_id == self.me.run_id:
            try:
                self.fs.rm(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> "Lease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
