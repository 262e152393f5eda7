"""Compact targets in stores: each storage option round-trips within its stated error, provenance refuses a changed
option, a student trains on the coefficients, and the device decode equals the loader's (the codecs' own maths:
test_codecs.py)."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
import zarr
from typer.testing import CliRunner

from conftest import TINY_TEACHER, tiny_cache_config

from distillkit.cache import run_cache
from distillkit.cli import app
from distillkit.store.reader import StoreSource

runner = CliRunner()
T = TINY_TEACHER["name"]
PATCH = f"teachers/{T}/patch"
# stated error per option: (cos_p01 at least, relative L2 at most) against the fp16 features of the same store
BOUNDS = {"int8": (0.995, 0.03), "pca:96": (0.90, 0.2), "pca:96+int8": (0.90, 0.2)}


@pytest.fixture(scope="module")
def stores(photos, tmp_path_factory):
    root = tmp_path_factory.mktemp("storage")
    out = {}
    for storage in ["fp16", *BOUNDS]:
        url = root / f"{storage.replace(':', '_').replace('+', '_')}.zarr"
        run_cache(tiny_cache_config(photos, url, teachers=[{**TINY_TEACHER, "storage": storage}]),
                  show_progress=False)
        out[storage] = url
    return out


def _features(url, path: str = PATCH) -> np.ndarray:
    src = StoreSource(str(url))
    n, s = len(src.ids), src.manifest.shard_size
    x = np.concatenate([src.read(path, i, min(i + s, n)) for i in range(0, n, s)])
    return x[src.valid].astype(np.float32).reshape(-1, x.shape[-1])


@pytest.mark.parametrize("storage", list(BOUNDS))
def test_each_option_round_trips_within_its_stated_error(stores, storage):
    ref, got = _features(stores["fp16"]), _features(stores[storage])
    assert got.shape == ref.shape  # decode: full gives the teacher's width back
    cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
    min_cos, max_rel = BOUNDS[storage]
    assert np.percentile(cos, 1) >= min_cos
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) <= max_rel
    ref_cls, got_cls = _features(stores["fp16"], f"teachers/{T}/cls"), _features(stores[storage], f"teachers/{T}/cls")
    # full width (int8 with +int8: its range comes from only 9 calibration CLS tokens here, hence the looser bound)
    assert np.linalg.norm(got_cls - ref_cls) / np.linalg.norm(ref_cls) <= (0.06 if "int8" in storage else 1e-6)
    g = zarr.open_group(str(stores[storage]), mode="r")
    assert g[f"teachers/{T}/cls"].dtype == (np.int8 if "int8" in storage else np.float16)
    prov = g[f"teachers/{T}"].attrs["provenance"]
    assert prov["storage"] == storage and len(prov["storage_sha256"]) == 64
    stored = g[PATCH]
    assert stored.dtype == (np.int8 if storage.endswith("int8") else np.float16)
    assert stored.shape[-1] == (96 if storage.startswith("pca") else 384)
    # the statistics describe what the reader returns
    mean = g[f"teachers/{T}/stats/patch_mean"][:]
    np.testing.assert_allclose(mean, got.mean(0), atol=2e-3 * np.abs(got).max())


def test_inspect_reports_bytes_per_sample_and_variance(stores):
    res = runner.invoke(app, ["inspect", str(stores["pca:96+int8"]), "--json"])
    assert res.exit_code == 0, res.output
    import json
    st = json.loads(res.output)["storage"][T]
    assert st["bytes_per_sample"] == 16 * 96 + 384  # int8 coefficients and an int8 CLS token
    assert st["ratio_vs_fp16"] == pytest.approx((16 * 96 + 384) / (16 * 384 * 2 + 768))
    assert 0 < st["retained_variance"] <= 1


def test_reopening_with_another_storage_is_refused(stores, photos, tmp_path):
    cfg = tmp_path / "int8.yaml"
    cfg.write_text(yaml.safe_dump({"teachers": [{**TINY_TEACHER, "storage": "int8"}]}))
    res = runner.invoke(app, ["cache", "--source", str(photos), "--store", str(stores["fp16"]), "--config", str(cfg),
                              "--image-size", "56", "--shard-size", "4", "--val-fraction", "0.25"])
    assert res.exit_code != 0
    assert "storage: store has 'fp16', this run has 'int8'" in " ".join(res.output.split())
    bad = runner.invoke(app, ["cache", "--source", str(photos), "--store", str(tmp_path / "x.zarr"),
                              "--teacher", T, "--storage", "pca:0"])
    assert bad.exit_code != 0 and "pca:0" in bad.output


def test_student_trains_on_pca_coefficients(stores, tmp_path):
    from distillkit.training.dune.config import TrainConfig
    from distillkit.training.dune.trainer import train

    src = StoreSource(str(stores["pca:96"]), decode="coeffs")
    assert src.provenance[T].embed_dim == 96
    assert src.read(PATCH, 0, 4).shape[-1] == 96 and src.read(f"teachers/{T}/cls", 0, 4).shape[-1] == 96
    assert set(src.stats(T)) == {"patch_mean", "patch_std", "cls_mean", "cls_std"}
    cfg = TrainConfig(stores=[str(stores["pca:96"])], out_dir=str(tmp_path / "s"), max_steps=4, num_workers=0,
                      batch_size=3, decode="coeffs", student={"preset": "custom", "embed_dim": 32, "depth": 1,
                                                                "num_heads": 2})
    result = train(cfg)
    assert result["steps"] == 4 and np.isfinite(result["last_loss"])
    from distillkit.training.checkpoint import load_checkpoint
    ck = load_checkpoint(result["checkpoint"])
    assert ck["teacher_dims"][T][0] == 96  # the projector predicts the 96 coefficients
    with pytest.raises(ValueError, match="decode=coeffs needs PCA storage"):
        StoreSource(str(stores["int8"]), decode="coeffs")


def test_bench_storage_measures_each_option_against_fp16(stores):
    import json

    res = runner.invoke(app, ["bench", "storage", "--store", str(stores["fp16"]), "--option", "int8",
                              "--option", "pca:96", "--epochs", "1", "--batch-size", "4", "--json"])
    assert res.exit_code == 0, res.output
    row = json.loads(res.stdout[res.stdout.index("{"):])["teachers"][T]
    opts = row["options"]
    assert opts["int8"]["ratio_vs_fp16"] == pytest.approx(0.5)
    assert opts["pca:96"]["ratio_vs_fp16"] == pytest.approx((16 * 96 * 2 + 768) / (16 * 384 * 2 + 768))
    assert opts["int8"]["cos_p01"] >= 0.995 and opts["int8"]["rel_l2"] < opts["pca:96"]["rel_l2"]
    assert 0 < opts["pca:96"]["retained_variance"] <= 1
    curve = row["pca_variance_curve"]
    assert list(curve.values()) == sorted(curve.values()) and curve[str(384)] == pytest.approx(1.0)
    for o in opts.values():  # the training reader ran on a transcoded copy, next to the fp16 store
        assert o["samples_per_s"] > 0 and o["reader_ratio_vs_fp16"] == pytest.approx(
            o["samples_per_s"] / o["samples_per_s_fp16"])
    bad = runner.invoke(app, ["bench", "storage", "--store", str(stores["int8"])])
    assert bad.exit_code != 0 and "needs an fp16 store" in bad.output


def test_student_trained_on_compact_targets_is_compared_on_fp16(stores):
    from distillkit.bench.storage_student import student_gap

    res = student_gap(str(stores["fp16"]), "pca:96+int8", steps=2, batch_size=4,
                      student={"preset": "custom", "embed_dim": 32, "depth": 1, "num_heads": 2})
    for arm in ("fp16", "compact"):
        m = res[arm][T]
        assert np.isfinite(m["loss"]) and -1 <= m["cos_patch"] <= 1
    assert res["loss_ratio"][T] == pytest.approx(res["compact"][T]["loss"] / res["fp16"][T]["loss"])


@pytest.mark.parametrize("storage,decode", [("int8", "full"), ("pca:96+int8", "full"), ("pca:96+int8", "coeffs")])
def test_device_decode_equals_loader_decode(stores, storage, decode):
    """TrainConfig.decode_on=device: the loader hands over the stored codes, TargetNorm decodes them on the device."""
    import torch

    from distillkit.training.dune.normalize import TargetNorm

    cpu_src = StoreSource(str(stores[storage]), decode=decode)
    dev_src = StoreSource(str(stores[storage]), decode=decode, on_device=True)
    cpu, dev = TargetNorm({T: cpu_src}, torch.device("cpu")), TargetNorm({T: dev_src}, torch.device("cpu"))
    for kind in ("patch", "cls"):
        path = f"teachers/{T}/{kind}"
        codes = dev_src.read(path, 0, 4)
        assert codes.dtype == np.int8  # the loader moved only the compact bytes
        a = cpu(T, kind, torch.from_numpy(cpu_src.read(path, 0, 4)))
        b = dev(T, kind, torch.from_numpy(codes))
        torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-3)  # the CPU path rounds to fp16 once more
