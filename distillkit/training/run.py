"""What every trainer does around its own loop (torchtitan's one trainer, less the loop): the output folder, a
fine-tuning start, resume with a spec check, atomic checkpoints at a cadence, ``metrics.json``, progress reports,
the loss-curve PNG and the result dict.

A trainer opens a `Run` once its inputs are checked (a refused store leaves no folder behind), builds its model,
optimiser and schedule, `start`s (which resumes when ``out_dir/checkpoint-last.pt`` is there), then per step
`log`s a record and `save`s when `due`; `finish` plots the curve and returns the result. Every checkpoint holds
``model``, ``optimizer``, ``scheduler``, ``metrics``, ``rng``, the run's spec (what must not change on resume) and
whatever the trainer adds; all of it goes through `distillkit.training.checkpoint`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

import torch

from distillkit.training.checkpoint import CKPT_NAME, init_from, load_checkpoint, save_checkpoint
from distillkit.training.distributed import Distributed
from distillkit.training.tasks import OnStep

log = logging.getLogger("distillkit")


class Run:
    """One training run's files and bookkeeping. `cfg` needs ``out_dir``, ``resume``, ``init_from`` and
    ``ckpt_every``; `kind` is the task (the checkpoint kind); `spec` maps checkpoint keys to values a resumed run
    must match; `metrics` starts ``metrics.json`` (``train`` and ``eval`` lists are added). Under torchrun rank 0
    writes and reports progress, and every rank waits for each checkpoint."""

    def __init__(self, cfg: Any, kind: str, spec: dict[str, Any], metrics: dict[str, Any],
                 on_step: OnStep | None = None, dist: Distributed | None = None):
        self.cfg, self.kind, self.spec, self.on_step, self.dist = cfg, kind, spec, on_step, dist
        self.rank = dist.rank if dist else 0
        self.out = Path(cfg.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.path = self.out / CKPT_NAME
        self.resuming = bool(cfg.resume) and self.path.exists()
        self.metrics: dict[str, Any] = {**metrics, "train": [], "eval": []}
        self.state: dict[str, Any] = {}

    def init_from(self, model: torch.nn.Module) -> bool:
        """Fine-tuning start: `cfg.init_from`'s matching tensors into `model`, unless this run resumes (its own
        checkpoint is newer). True when it did."""
        if not self.cfg.init_from or self.resuming:
            return False
        init_from(model, self.cfg.init_from, self.kind)
        return True

    def start(self, model: torch.nn.Module, optimizer: Any, scheduler: Any) -> dict:
        """Take the objects every checkpoint saves. When resuming: check the checkpoint's spec, load their states,
        the metrics and the RNG state, and return the checkpoint (for the trainer's position); else {}."""
        self.state = {"model": model, "optimizer": optimizer, "scheduler": scheduler}
        if not self.resuming:
            return {}
        ck = load_checkpoint(self.path, self.kind)  # on the CPU: the RNG state must be; load_state_dict moves the rest
        written = {k: ck.get(k) for k in self.spec}
        if written != self.spec:
            raise ValueError(f"{self.path} was written with {written}; this run has {self.spec}. Use the same "
                             f"settings or a new out_dir.")
        for key, obj in self.state.items():
            obj.load_state_dict(ck[key])
        self.metrics = ck["metrics"]
        torch.set_rng_state(ck["rng"]["torch"])
        return ck

    def log(self, rec: dict, total: int) -> None:
        """A step's record (``step`` and ``loss`` at least) into the metrics; progress to `on_step`."""
        self.metrics["train"].append(rec)
        if self.on_step and self.rank == 0:
            self.on_step(rec["step"], total, rec)

    def due(self, step: int, total: int) -> bool:
        """The checkpoint cadence: every ``ckpt_every`` steps before the last (the last one the trainer saves)."""
        return step % self.cfg.ckpt_every == 0 and step < total

    def save(self, **fields: Any) -> None:
        """``checkpoint-last.pt`` (atomic, with `fields` beside the states and the spec) and ``metrics.json``."""
        if self.rank == 0:
            save_checkpoint(self.path, self.kind, {**{k: obj.state_dict() for k, obj in self.state.items()},
                                                   "metrics": self.metrics, "rng": {"torch": torch.get_rng_state()},
                                                   **self.spec, **fields})
            (self.out / "metrics.json").write_text(json.dumps(self.metrics, indent=1))
        if self.dist:
            self.dist.barrier()

    def finish(self, plot: Callable[[dict, Path], Any], **result: Any) -> dict:
        """Plot the loss curve (rank 0) and return the paths, the first and last finite loss, and `result`."""
        png = self.out / "loss_curve.png"
        if self.rank == 0:
            plot(self.metrics, png)
        losses = [r["loss"] for r in self.metrics["train"] if r["loss"] == r["loss"]]
        return {"checkpoint": str(self.path), "metrics": str(self.out / "metrics.json"), "loss_curve": str(png),
                **result, "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None}
