"""Busy time per stage of a caching run, and the stage that limits it (the progress bar and the bench show it)."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager


class StageClock:
    """Seconds each stage spent working, and how many workers share it. A stage's load is its busy time over
    (workers x wall time); the most loaded stage is the bottleneck: speeding up any other would not speed the run."""

    def __init__(self):
        self._busy: dict[str, float] = {}
        self._cpu: dict[str, float] = {}  # CPU seconds of the stage's own threads (not of threads it waits on)
        self._workers: dict[str, int] = {}
        self._lock = threading.Lock()
        self._t0 = time.perf_counter()

    def stage(self, name: str, workers: int = 1) -> None:
        with self._lock:
            self._workers[name] = max(workers, 1)
            self._busy.setdefault(name, 0.0)

    def add(self, name: str, seconds: float, cpu_s: float = 0.0) -> None:
        with self._lock:
            self._busy[name] = self._busy.get(name, 0.0) + seconds
            self._cpu[name] = self._cpu.get(name, 0.0) + cpu_s

    @contextmanager
    def timing(self, name: str):
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t0, time.thread_time() - c0)

    def report(self) -> dict[str, dict]:
        wall = max(time.perf_counter() - self._t0, 1e-9)
        with self._lock:
            return {n: {"busy_s": round(b, 4), "cpu_s": round(self._cpu.get(n, 0.0), 4),
                        "workers": self._workers.get(n, 1),
                        "load": round(b / (self._workers.get(n, 1) * wall), 4)} for n, b in self._busy.items()}

    def bottleneck(self) -> str | None:
        loads = {n: r["load"] for n, r in self.report().items()}
        return max(loads, key=loads.get) if loads and max(loads.values()) > 0 else None
