"""Progress of long work outside training (writing scenes, benchmarks): a tqdm bar when stderr is a terminal, and
otherwise a plain line every tenth of the work or every `every_s` seconds (a redrawn bar is noise in a log file or
a CI transcript). `quiet` shows nothing. Training has its own lines with loss and ETA
(`distillkit.training.progress`)."""

from __future__ import annotations

import math
import sys
import time


class Cadence:
    """When a progress report is due: at each tenth (`parts`) of the work, at least every `every_s` seconds, and at
    the end. Counting starts at `done` (a resumed run starts at its own step). Training's lines use it too."""

    def __init__(self, done: int = 0, total: int = 1, every_s: float = 30.0, parts: int = 10,
                 now: float | None = None):
        self.every_s, self.parts = every_s, parts
        self.last_t = time.perf_counter() if now is None else now
        self.next_part = math.floor(done * parts / max(total, 1)) + 1

    def due(self, done: int, total: int, now: float) -> bool:
        part_due = total and done * self.parts >= self.next_part * total
        if not (part_due or done >= total or now - self.last_t >= self.every_s):
            return False
        while total and self.next_part * total <= done * self.parts:
            self.next_part += 1
        self.last_t = now
        return True


class Progress:
    """``with Progress(total, "writing frames", "frame") as p: ... p.advance()``"""

    def __init__(self, total: int, desc: str, unit: str = "it", quiet: bool = False, every_s: float = 30.0,
                 stream=None):
        self.total, self.desc, self.unit = max(int(total), 0), desc, unit
        self.stream = stream or sys.stderr
        self.done, self.t0, self.lines = 0, time.perf_counter(), 0
        self.cadence = Cadence(0, self.total, every_s, now=self.t0)
        self.bar = None
        self.quiet = quiet
        if not quiet and self.stream.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, desc=desc, unit=unit, file=self.stream)

    def advance(self, n: int = 1, note: str = "") -> None:
        self.update(self.done + n, note=note)

    def update(self, done: int, total: int | None = None, note: str = "") -> None:
        """`done` of `total` (a total known only once the work starts may come with the first update); `note`
        is shown after the counts (e.g. the stage that limits a caching run)."""
        self.done = done
        if total is not None:
            self.total = total
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.total, self.bar.n = self.total, done
            if note:
                self.bar.set_postfix_str(note, refresh=False)
            self.bar.refresh()
            return
        now = time.perf_counter()
        if self.cadence.due(self.done, self.total, now):
            self.lines += 1
            rate = self.done / max(now - self.t0, 1e-9)
            eta = f", ETA {(self.total - self.done) / rate:.0f} s" if self.total and self.done < self.total else ""
            print(f"{self.desc}: {self.done}/{self.total} {self.unit}s ({100 * self.done // max(self.total, 1)}%), "
                  f"{rate:.3g} {self.unit}/s, {now - self.t0:.0f} s{eta}{', ' + note if note else ''}",
                  file=self.stream, flush=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
