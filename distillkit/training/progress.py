"""A training run's progress as log lines: step/total, loss, images/s and ETA, every tenth of the run and at least
every `every_s` seconds, and at the last step. Lines, not a redrawn bar: they read the same in a terminal, a
redirected log, a Prefect run's log and a CI transcript. The ``distillkit.progress`` logger carries them, so a
command's ``--quiet`` (or a flow) silences them by its level alone.
"""

from __future__ import annotations

import logging
import time

from distillkit.progress import Cadence

log = logging.getLogger("distillkit.progress")


def duration(s: float) -> str:
    s = max(int(round(s)), 0)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class ProgressLine:
    """Called with each logged step: (step, total, record with ``loss``). Rates count from the first step seen (a
    resumed run's own steps, start-up excluded)."""

    def __init__(self, name: str, images_per_step: int, every_s: float = 30.0, parts: int = 10):
        self.name, self.images_per_step, self.every_s, self.parts = name, images_per_step, every_s, parts
        self.first: tuple[int, float] | None = None
        self.cadence: Cadence | None = None
        self.lines = 0

    def __call__(self, step: int, total: int, rec: dict) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = (step, now)
            self.cadence = Cadence(step, total, self.every_s, self.parts, now)
        if not self.cadence.due(step, total, now):
            return
        self.lines += 1
        done, dt = step - self.first[0], now - self.first[1]
        rate = done / dt if done and dt > 0 else None
        loss = rec.get("loss")
        speed = f"{rate * self.images_per_step:.1f} img/s, ETA {duration((total - step) / rate)}" if rate else \
            "img/s -"
        log.info("%s: step %d/%d (%d%%), loss %s, %s", self.name, step, total, 100 * step // max(total, 1),
                 f"{loss:.4g}" if isinstance(loss, float) else "-", speed)
