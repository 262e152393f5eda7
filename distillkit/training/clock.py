"""Where a training step's time goes: wall seconds per phase (reader wait, host->device copy, target decode, loss,
backward, optimiser, logging syncs, checkpoints) and each step's end, for `distillkit bench train`.

A trainer takes an optional `StepClock`; without one every `phase` is a shared no-op context (no timer, no sync), so
a normal run pays nothing. On a GPU the clock synchronises at each phase boundary (else the time of queued kernels
lands in whichever phase next waits for them); that serialises the step, so a bench reads images/s from a run
without a clock and the phase split from one with it.
"""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from typing import Iterator

import torch

_NOTHING = nullcontext()


class StepClock:
    def __init__(self, device: torch.device | str = "cpu", sync: bool | None = None):
        dev = torch.device(device)
        self.sync = dev.type == "cuda" if sync is None else sync
        self.device = dev
        self.phases: list[dict[str, float]] = [{}]  # one dict per step: phase -> seconds
        self.step_end: list[float] = []  # perf_counter at the end of each step
        self.step_cpu: list[float] = []  # this process's CPU seconds (all its threads) at the end of each step

    def _wait(self) -> None:
        if self.sync and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._wait()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._wait()
            cur = self.phases[-1]
            cur[name] = cur.get(name, 0.0) + time.perf_counter() - t0

    def end_step(self) -> None:
        self._wait()
        self.step_end.append(time.perf_counter())
        self.step_cpu.append(time.process_time())
        self.phases.append({})

    def totals(self, skip: int) -> dict[str, float]:
        """Seconds per phase summed over the steps after the first `skip` (warm-up)."""
        out: dict[str, float] = {}
        for p in self.phases[skip:len(self.step_end)]:
            for k, v in p.items():
                out[k] = out.get(k, 0.0) + v
        return out

    def steady_s(self, skip: int) -> tuple[int, float]:
        """(steps, wall seconds) from the end of step `skip` to the end of the last step."""
        if len(self.step_end) <= skip or skip < 1:
            raise ValueError(f"need more than {skip} timed steps (warm-up >= 1), got {len(self.step_end)}")
        return len(self.step_end) - skip, self.step_end[-1] - self.step_end[skip - 1]


def phase(clock: StepClock | None, name: str):
    """`clock.phase(name)`, or a no-op context without a clock."""
    return clock.phase(name) if clock is not None else _NOTHING
