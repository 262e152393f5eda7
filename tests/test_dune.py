"""DUNE options: projectors, teacher dropping, data sharing, teacher-balanced batches, PHI-S."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import pytest
import torch

from conftest import tiny_cache_config
from distillkit.cache import run_cache
from distillkit.training.dune.config import TrainConfig
from distillkit.store.reader import StoreSource
from distillkit.training.dune.normalize import TargetNorm
from distillkit.training.dune.objectives import combine, lowest_loss_drop, sharing_mask
from distillkit.training.dune.trainer import train

STUDENT = {"preset": "custom", "embed_dim": 48, "depth": 2, "num_heads": 2}
TEACHERS = [{"name": "dinov2_vits14_reg", "overrides": {"depth": 2}}, {"name": "dinov2_vits14", "overrides": {"depth": 2}}]


def _falls(metrics_path) -> tuple[float, float]:
    losses = [r["loss"] for r in json.loads(open(metrics_path).read())["train"]]
    return float(np.mean(losses[:3])), float(np.mean(losses[-3:]))


@pytest.mark.parametrize("projector", ["sp", "lp"])
def test_projectors_train(cached_store, tmp_path, projector):
    res = train(TrainConfig(stores=[str(cached_store)], out_dir=str(tmp_path), student=STUDENT, batch_size=3,
                            lr=2e-3, max_steps=25, num_workers=0, projector=projector))
    early, late = _falls(res["metrics"])
    assert late < 0.8 * early, (early, late)


@pytest.fixture(scope="module")
def group_stores(photos, tmp_path_factory):
    """Two domain groups (disjoint images), each cached with both teachers."""
    root = tmp_path_factory.mktemp("groups")
    files = sorted(photos.iterdir())
    stores = {}
    for name, subset in (("a", files[:8]), ("b", files[8:])):
        src = root / f"src_{name}"
        src.mkdir()
        for f in subset:
            shutil.copy(f, src / f.name)
        store = root / f"{name}.zarr"
        run_cache(tiny_cache_config(src, store, teachers=TEACHERS, val_fraction=0.2), show_progress=False)
        stores[name] = store
    return stores


def _group_cfg(stores, out, **kw) -> TrainConfig:
    return TrainConfig(groups=[{"name": "a", "stores": [str(stores["a"])], "teacher": "dinov2_vits14_reg"},
                               {"name": "b", "stores": [str(stores["b"])], "teacher": "dinov2_vits14"}],
                       out_dir=str(out), student=STUDENT, batch_size=4, lr=2e-3, num_workers=0, log_batches=True,
                       **kw)


@pytest.mark.parametrize("sharing", ["full", "generic", "none"])
def test_data_sharing_trains_with_balanced_batches(group_stores, tmp_path, sharing):
    extra = {"generic_group": "a"} if sharing == "generic" else {}
    res = train(_group_cfg(group_stores, tmp_path, max_steps=24, data_sharing=sharing, teacher_drop="lowest_loss",
                           **extra))
    early, late = _falls(res["metrics"])
    assert late < 0.85 * early, (early, late)
    ids_a = set(StoreSource(str(group_stores["a"])).ids.tolist())
    for line in (tmp_path / "batches" / "rank0.jsonl").read_text().splitlines():
        ids = json.loads(line)["ids"]
        counts = Counter("a" if i in ids_a else "b" for i in ids)
        assert counts == {"a": 2, "b": 2}, counts  # teacher-balanced: half of each batch from each group
    ev = res["final_eval"]
    assert set(ev) - {"step"} == {"dinov2_vits14_reg", "dinov2_vits14"}


def test_balanced_resume_is_exact(group_stores, tmp_path):
    ref = train(_group_cfg(group_stores, tmp_path / "ref", max_steps=10, ckpt_every=4))

    class Crash(Exception):
        pass

    def crash(step, ids):
        if step == 6:
            raise Crash()

    with pytest.raises(Crash):
        train(_group_cfg(group_stores, tmp_path / "run", max_steps=10, ckpt_every=4), on_batch=crash)
    res = train(_group_cfg(group_stores, tmp_path / "run", max_steps=10, ckpt_every=4))
    a = [r["batch"] for r in json.loads(open(ref["metrics"]).read())["train"]]
    b = [r["batch"] for r in json.loads(open(res["metrics"]).read())["train"]]
    assert a == b


def test_sharing_mask_and_dropping():
    teachers = ["t1", "t2"]
    groups = ["a", "b", "a"]
    own = {"a": "t1", "b": "t2"}
    avail = {"t1": torch.tensor([True, True, True]), "t2": torch.tensor([True, True, False])}
    full = sharing_mask(teachers, groups, own, avail, "full", None)
    assert full.tolist() == [[1, 1, 1], [1, 1, 0]]
    none = sharing_mask(teachers, groups, own, avail, "none", None)
    assert none.tolist() == [[1, 0, 1], [0, 1, 0]]
    generic = sharing_mask(teachers, groups, own, avail, "generic", "a")
    assert generic.tolist() == [[1, 0, 1], [1, 1, 0]]
    losses = torch.tensor([[1.0, 5.0, 2.0], [3.0, 1.0, 9.0]])
    g = torch.Generator().manual_seed(0)
    assert lowest_loss_drop(losses, full, 1.0, g).tolist() == [[0, 1, 1], [1, 0, 0]]  # only the worst stays
    assert lowest_loss_drop(losses, full, 0.0, g).tolist() == full.tolist()
    kept = torch.stack([lowest_loss_drop(losses, torch.ones(2, 3), 0.3, g) for _ in range(2000)])
    assert abs(float(kept[:, 0, 0].mean()) - 0.7) < 0.05  # the non-worst teacher survives with 1 - p
    per_image = combine(losses, full)
    assert torch.allclose(per_image, torch.tensor([2.0, 3.0, 2.0]))


def test_phi_s_is_isotropic_and_invertible(cached_store):
    src = StoreSource(str(cached_store))
    t = src.teachers[0]
    norm = TargetNorm({t: src}, torch.device("cpu"), "phi-s")
    usable = src.valid & (src.split == 0)
    x = torch.from_numpy(src.read(f"teachers/{t}/patch", 0, len(src.ids))[usable].astype(np.float32))
    y = norm(t, "patch", x).reshape(-1, x.shape[-1]).double()
    var = y.var(dim=0, unbiased=False)
    assert float((var - 1).abs().max()) < 2e-3  # Hadamard rotation: every output dimension has variance 1
    back = norm.invert(t, "patch", norm(t, "patch", x))
    torch.testing.assert_close(back, x, rtol=1e-3, atol=1e-3)
    res_dims = x.shape[-1]
    assert norm.params[(t, "patch")]["rot"].shape == (res_dims, res_dims)


@pytest.mark.parametrize("c", [4, 12, 192, 384, 768, 1024, 1536])
def test_hadamard_orders(c):
    from distillkit.training.dune.normalize import hadamard

    h = hadamard(c)
    assert h is not None and h.shape == (c, c)
    np.testing.assert_allclose(h @ h.T, np.eye(c), atol=1e-12)
    np.testing.assert_allclose(np.abs(h), 1 / np.sqrt(c))
