"""Student training from a store: loss falls, projectors, exact resume after a crash, CLI."""

from __future__ import annotations

import json
import re
import subprocess

import numpy as np
import pytest
import torch

from conftest import BIN, REPO
from distillkit.training.dune.config import TrainConfig
from distillkit.training.dune.trainer import train
from distillkit.training.checkpoint import load_checkpoint

TINY_STUDENT = {"preset": "custom", "embed_dim": 64, "depth": 2, "num_heads": 2}


def _cfg(store, out, **kw) -> TrainConfig:
    base = dict(stores=[str(store)], out_dir=str(out), student=TINY_STUDENT, batch_size=3, lr=2e-3,
                num_workers=0, ckpt_every=3, warmup_fraction=0.1)
    base.update(kw)
    return TrainConfig(**base)


def _early_late(metrics_path):
    losses = [r["loss"] for r in json.loads(open(metrics_path).read())["train"]]
    return np.mean(losses[:3]), np.mean(losses[-3:])


@pytest.mark.parametrize("projector", ["tp", "mlp"])
def test_loss_falls(cached_store, tmp_path, projector):
    res = train(_cfg(cached_store, tmp_path / projector, projector=projector, max_steps=30))
    early, late = _early_late(res["metrics"])
    assert late < 0.8 * early, (early, late)
    ev = res["final_eval"]["dinov2_vits14_reg"]
    assert ev["samples"] > 0 and -1 <= ev["cos_patch"] <= 1 and ev["loss"] > 0
    assert (tmp_path / projector / "loss_curve.png").stat().st_size > 1000


class Crash(Exception):
    pass


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_after_crash_replays_exact_order_and_weights(cached_store, tmp_path, workers):
    steps = 8  # > one epoch of 9 train samples / batch 3: the resume crosses an epoch boundary
    ref = train(_cfg(cached_store, tmp_path / "ref", max_steps=steps, num_workers=workers))
    ref_metrics = json.loads(open(ref["metrics"]).read())

    def crash_at_5(step, ids):
        if step == 5:
            raise Crash()

    with pytest.raises(Crash):
        train(_cfg(cached_store, tmp_path / "run", max_steps=steps, num_workers=workers), on_batch=crash_at_5)
    seen_after = []
    res = train(_cfg(cached_store, tmp_path / "run", max_steps=steps, num_workers=workers),
                on_batch=lambda s, ids: seen_after.append(s))
    assert seen_after[0] == 3  # resumed from the step-3 checkpoint, not from scratch
    assert (res["steps"], res["steps_this_run"], res["resumed_from"]) == (steps, steps - 3, 3)
    from distillkit.training.dune.task import report
    assert report(None, res).headline.startswith(f"trained {steps - 3} steps ({steps} in all, resumed at step 3)")
    got = json.loads(open(res["metrics"]).read())
    assert [r["batch"] for r in got["train"]] == [r["batch"] for r in ref_metrics["train"]]
    a = load_checkpoint(ref["checkpoint"])["model"]
    b = load_checkpoint(res["checkpoint"])["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    ck = load_checkpoint(res["checkpoint"])
    assert set(ck) >= {"model", "optimizer", "scheduler", "position"}
    assert ck["position"]["step"] == steps


def test_resume_refuses_different_data_settings(cached_store, tmp_path):
    train(_cfg(cached_store, tmp_path, max_steps=3))
    with pytest.raises(ValueError, match="same settings"):
        train(_cfg(cached_store, tmp_path, max_steps=6, batch_size=2))


def test_cli_train(cached_store, tmp_path):
    exe = BIN / "distillkit"
    proc = subprocess.run([str(exe), "train", "--store", str(cached_store), "--out", str(tmp_path / "cli"),
                           "--preset", "custom", "--embed-dim", "64", "--depth", "2", "--heads", "2",
                           "--max-steps", "12", "--batch-size", "3", "--lr", "0.002", "--num-workers", "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "trained 12 steps in" in proc.stdout and "held-out metrics per teacher" in proc.stdout
    progress = re.findall(r"step (\d+)/12 \(\d+%\), loss [\d.e+-]+, [\d.]+ img/s, ETA", proc.stderr)
    assert len(progress) >= 2 and progress[-1] == "12", proc.stderr  # periodic lines, readable when not a TTY
    assert "dinov2_vits14_reg" in proc.stdout  # the teacher's row of the table
    assert (tmp_path / "cli" / "checkpoint-last.pt").exists()
    bad = subprocess.run([str(exe), "train", "--store", str(tmp_path / "nope.zarr"), "--out", str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "nope.zarr" in (bad.stderr + bad.stdout)


def test_config_errors_load_no_torch():
    """The task registry, its task modules and the CLI read configs without torch: a config error comes back at
    once, not after the 5 s torch + timm import."""
    code = ("import sys, distillkit.cli, distillkit.training.tasks as t\n"
            "[task.plugs() for task in t.TASKS.values()]\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith(('torch', 'timm')))")
    subprocess.run([str(BIN / "python"), "-c", code], check=True, timeout=120)


def test_deferred_finite_check_skips_the_bad_update_then_stops():
    """The GPU path's check (forced here on the CPU's fused AdamW): a NaN step leaves the weights as they were, a
    good step still trains, and the held flags stop the run naming the bad step."""
    from distillkit.training.dune.trainer import FiniteGuard, NonFiniteLoss
    from distillkit.training.optim import adamw

    model = torch.nn.Linear(4, 2)
    opt = adamw(model, 1e-2, 0.0)
    guard = FiniteGuard(opt, torch.device("cpu"), world=1, deferred=True)
    assert guard.deferred and FiniteGuard(opt, torch.device("cpu"), world=1).deferred is False

    def step(scale: float, k: int) -> None:
        opt.zero_grad(set_to_none=True)
        losses = model(torch.ones(3, 4)).sum(1)[None] * scale  # [T=1, B=3]
        guard.hold(losses, ["t"], ["a", "b", "c"], k, torch.ones(1, 3))
        losses.sum().backward()
        opt.step()
        guard.step_done()

    before = [p.detach().clone() for p in model.parameters()]
    step(float("nan"), 1)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    step(1.0, 2)
    assert not torch.equal(model.weight, before[0]) and torch.isfinite(model.weight).all()
    with pytest.raises(NonFiniteLoss, match="step 1: the loss is not finite"):
        guard.settle()


def test_bench_train_times_every_phase_beside_the_bound(cached_store):
    """`distillkit bench train` on a given store: each trainer step beside a bound step, every phase timed."""
    from distillkit.bench.train import bench_train

    r = bench_train("dune", store=str(cached_store), student="vit_tiny", batch_size=3, steps=3, warmup=1,
                    num_workers=0, threads=1)
    assert r["task"] == "dune" and len(r["trainer_ms_all"]) == len(r["bound_ms_all"]) == 3
    phases = set(r["phases_ms_per_step"])
    assert {"reader", "h2d", "decode", "forward_loss", "backward", "optimizer", "sync", "log", "checkpoint"} <= phases
    assert r["trainer_vs_bound"] > 0 and r["trainer_vs_bound_cpu"] > 0
    assert r["trainer_images_per_s"] == pytest.approx(3e3 / r["trainer_ms_per_step"])
    assert abs(r["other_ms_per_step"]) < 0.25 * r["trainer_ms_per_step"]  # the phases account for the step
    with pytest.raises(ValueError, match="dune or pointmap"):
        bench_train("segmentation")
