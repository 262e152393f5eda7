"""`bench decouple`: the cached and the online arm train the same student on the same targets; the JSON adds up."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import TINY_TEACHER

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_online_targets_equal_the_cached_ones(cached_store):
    """The online arm's teacher call on the cached student views reproduces the store's targets up to fp16."""
    from distillkit.bench.decouple import teacher_targets
    from distillkit.config.cache import TeacherConfig
    from distillkit.store.reader import StoreSource
    from distillkit.teachers import load_teacher

    src = StoreSource(str(cached_store))
    name = TINY_TEACHER["name"]
    teacher = load_teacher(TeacherConfig(**TINY_TEACHER), tuple(src.manifest.image_hw), src.manifest.student_patch,
                           "cpu")
    rows = np.flatnonzero(src.valid)[:4]
    images = torch.from_numpy(src.read("samples/image", 0, len(src.ids))[rows])
    cls, patch = teacher_targets(teacher, images)
    cached_patch = src.read(f"teachers/{name}/patch", 0, len(src.ids))[rows].astype(np.float32)
    cached_cls = src.read(f"teachers/{name}/cls", 0, len(src.ids))[rows].astype(np.float32)
    for online, cached in ((patch, cached_patch), (cls, cached_cls)):
        # fp16 keeps 11 significant bits: rounding moves a value by at most half a unit in the last place
        tol = np.abs(cached) * 2.0 ** -11 + 1e-7
        assert (np.abs(online.numpy() - cached) <= tol).all()


def test_bench_decouple_json(photos):
    from distillkit.bench.decouple import bench_decouple

    steps, warmup, b = 2, 0, 4
    res = bench_decouple(TINY_TEACHER["name"], "vit_tiny", source=str(photos), image_size="56", batch_size=b,
                         steps=steps, warmup=warmup, overrides=TINY_TEACHER["overrides"], students=(1, 4),
                         gpu_sizes=(224,))
    assert res["images"] == 12 and res["rejected"] == 0
    assert len(res["step_s_cached_all"]) == len(res["step_s_online_all"]) == steps + warmup
    assert res["step_s_cached"] == float(np.median(res["step_s_cached_all"][warmup:]))
    assert res["ratio"] == pytest.approx(res["step_s_online"] / res["step_s_cached"])
    assert res["ratio_cpu_time"] == pytest.approx(res["cpu_s_online"] / res["cpu_s_cached"])
    assert 0 < res["teacher_forward_s"] < res["step_s_online"]
    # the same student init, batches and (up to fp16) targets: the two arms train the same model
    assert res["max_loss_diff"] < 1e-4
    assert res["loss_cached"][-1] != res["loss_cached"][0]  # it did train
    chk = res["targets"]
    assert chk["samples"] == b and chk["max_abs_diff"] <= chk["fp16_half_ulp_at_max"]
    t, s = res["teacher_forward_gflops_per_batch"], res["student_step_gflops_per_batch"]
    assert t > 0 and s > t  # a 2-block teacher forward is cheaper than the student's training step
    assert res["flops_ratio"] == pytest.approx((s + t) / s)
    per_c, per_o = res["step_s_cached"] / b, res["step_s_online"] / b
    for row in res["amortised"]:
        n = row["students"]
        assert row["cached_s_per_image"] == pytest.approx(res["cache_s_per_image"] + n * per_c)
        assert row["online_s_per_image"] == pytest.approx(n * per_o)
        assert row["speedup"] == pytest.approx(row["online_s_per_image"] / row["cached_s_per_image"])
    est = res["gpu_estimate"]["sizes"]["224px"]
    # ViT-L/14 at 224: 257 tokens, 24 blocks, width 1024: 2 x (12 n d^2 + 2 n^2 d) per block, plus the patch conv
    n, d = 257, 1024
    analytic = 24 * 2 * (12 * n * d * d + 2 * n * n * d) + 2 * 256 * 3 * 14 * 14 * d
    assert est["teacher_forward_gflops_per_image"] * 1e9 == pytest.approx(analytic, rel=0.01)
    assert est["ratio_dune_3_vitl_teachers"] > est["ratio_one_vitl_teacher"] > 1


def test_bench_decouple_cli_rejects_bad_input():
    from distillkit.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["bench", "decouple", "--teacher", "nope", "--json"])
    assert res.exit_code == 2 and "nope" in res.output
    res = runner.invoke(app, ["bench", "decouple", "--student", "vit_huge"])
    assert res.exit_code == 2 and "vit_huge" in res.output
