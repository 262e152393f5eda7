"""What every trainer does around its own loop (torchtitan's one trainer, less the loop): the output folder, a
fine-tuning start, resume with a spec check, atomic checkpoints at a cadence, ``metrics.json``, progress reports,
the loss-curve PNG and the result dict.

A trainer opens a `Run` once its inputs are checked (a refused store leaves no folder behind), builds its model,
optimiser and schedule, `start`s (which resumes when ``out_dir/checkpoint-last.pt`` is there), then per step
`log`s a record and `save`s when `due`; `finish` plots the curve and returns the result. A record may hold 0-d
tensors (losses still on the device): they are read in one go every ``log_every`` steps (a GPU trainer then does not
wait for its kernels each step), before every checkpoint and at the end. A checkpoint is a snapshot taken on the
training thread (tensors copied) and written on a thread of its own while training goes on. Every checkpoint holds
``model``, ``optimizer``, ``scheduler``, ``metrics``, ``rng``, the run's spec (what must not change on resume) and
whatever the trainer adds; all of it goes through `distillkit.training.checkpoint`.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import torch

from distillkit.training.checkpoint import CKPT_NAME, init_from, load_checkpoint, save_checkpoint
from distillkit.training.distributed import Distributed
from distillkit.training.progress import ProgressLine
from distillkit.training.tasks import OnStep

log = logging.getLogger("distillkit")


class Run:
    """One training run's files and bookkeeping. `cfg` needs ``out_dir``, ``resume``, ``init_from`` and
    ``ckpt_every``; `kind` is the task (the checkpoint kind); `spec` maps checkpoint keys to values a resumed run
    must match; `metrics` starts ``metrics.json`` (``train`` and ``eval`` lists are added). Under torchrun rank 0
    writes and reports progress, and every rank waits for each checkpoint."""

    def __init__(self, cfg: Any, kind: str, spec: dict[str, Any], metrics: dict[str, Any],
                 on_step: OnStep | None = None, dist: Distributed | None = None, log_every: int = 1,
                 images_per_step: int = 1):
        self.cfg, self.kind, self.spec, self.on_step, self.dist = cfg, kind, spec, on_step, dist
        self.log_every = max(log_every, 1)
        self.pending: list[dict] = []  # records whose tensors are not read yet
        self.writer: ThreadPoolExecutor | None = None
        self.writing: Future | None = None
        self.total = 0
        self.start_step = 0  # where this run began (a resumed run reports the steps it did and the total)
        self.rank = dist.rank if dist else 0
        self.progress = ProgressLine(Path(cfg.out_dir).name, images_per_step) if self.rank == 0 else None
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
        self.start_step = int(ck.get("step", ck.get("position", {}).get("step", 0)))
        torch.set_rng_state(ck["rng"]["torch"])
        return ck

    def log(self, rec: dict, total: int) -> None:
        """A step's record (``step`` and ``loss`` at least, values may be 0-d tensors) into the metrics; every
        ``log_every`` steps and at the last one the pending records are read and the newest goes to `on_step`."""
        self.pending.append(rec)
        self.total = total
        if rec["step"] % self.log_every == 0 or rec["step"] >= total:
            self.flush()

    def flush(self) -> None:
        """Read the pending records' tensors (one host sync) into ``metrics["train"]``; progress to `on_step`."""
        if not self.pending:
            return
        held = [(r, k) for r in self.pending for k, v in r.items() if isinstance(v, torch.Tensor)]
        if held:
            values = torch.stack([r[k].detach().float().reshape(()) for r, k in held]).tolist()
            for (r, k), v in zip(held, values):
                r[k] = v
        self.metrics["train"] += self.pending
        last, self.pending = self.pending[-1], []
        if self.progress is not None:
            self.progress(last["step"], self.total, last)
        if self.on_step and self.rank == 0:
            self.on_step(last["step"], self.total, last)

    def due(self, step: int, total: int) -> bool:
        """The checkpoint cadence: every ``ckpt_every`` steps before the last (the last one the trainer saves)."""
        return step % self.cfg.ckpt_every == 0 and step < total

    def save(self, **fields: Any) -> None:
        """``checkpoint-last.pt`` (atomic, with `fields` beside the states and the spec) and ``metrics.json``: a
        snapshot now, written on the writer thread (a write still in progress is waited for first)."""
        self.flush()
        if self.rank == 0:
            payload = snapshot({**{k: obj.state_dict() for k, obj in self.state.items()}, "metrics": self.metrics,
                                "rng": {"torch": torch.get_rng_state()}, **self.spec, **fields})
            self.wait()
            self.writer = self.writer or ThreadPoolExecutor(1, thread_name_prefix="checkpoint")
            self.writing = self.writer.submit(self._write, payload)
        if self.dist:
            self.dist.barrier()

    def _write(self, payload: dict) -> None:
        save_checkpoint(self.path, self.kind, payload)
        (self.out / "metrics.json").write_text(json.dumps(payload["metrics"], indent=1))

    def wait(self) -> None:
        """Until the last checkpoint is on disk (its error, if any, raised here)."""
        if self.writing is not None:
            done, self.writing = self.writing, None
            done.result()

    def close(self) -> None:
        """Wait for the checkpoint being written and stop the writer (trainers call it on every way out: a failed
        run must leave its last checkpoint complete for the resume)."""
        try:
            self.wait()
        finally:
            if self.writer is not None:
                self.writer.shutdown()
                self.writer = None

    def steps_done(self, steps: int) -> dict[str, int]:
        """What a result reports: the steps this run did and the run's total (a resume starts past 0)."""
        return {"steps": steps, "steps_this_run": steps - self.start_step, "resumed_from": self.start_step}

    def finish(self, plot: Callable[[dict, Path], Any], **result: Any) -> dict:
        """Plot the loss curve (rank 0) and return the paths, the first and last finite loss, and `result`."""
        png = self.out / "loss_curve.png"
        self.flush()
        self.close()
        if self.rank == 0:
            plot(self.metrics, png)
        losses = [r["loss"] for r in self.metrics["train"] if r["loss"] == r["loss"]]
        return {"checkpoint": str(self.path), "metrics": str(self.out / "metrics.json"), "loss_curve": str(png),
                **result, "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None}


def snapshot(obj: Any) -> Any:
    """`obj` with every tensor copied to the CPU: what a checkpoint holds while the model trains on."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return type(obj)((k, snapshot(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(snapshot(v) for v in obj)
    return obj
