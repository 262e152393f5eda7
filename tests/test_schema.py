"""distillkit_schemas: pydantic models, structural validation, content validation and the inspect/validate CLI."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import zarr
from pydantic import ValidationError

from distillkit_schemas import (
    MANIFEST_ATTR,
    PROVENANCE_ATTR,
    Manifest,
    Problem,
    TeacherProvenance,
    expected_arrays,
    read_manifest,
    validate_structure,
)
from distillkit.stores import summarize, validate_store

from conftest import BIN, REPO, TINY_TEACHER

TEACHER = TINY_TEACHER["name"]
CLI = BIN / "distillkit"


def _manifest(**kw) -> Manifest:
    base = dict(source="/data/imgs", source_fingerprint="ab" * 32, n_samples=10, shard_size=4, image_hw=(56, 84),
                student_patch=14, val_fraction=0.1, teachers=["dinov2_vits14_reg"])
    base.update(kw)
    return Manifest(**base)


def _provenance(**kw) -> TeacherProvenance:
    base = dict(name="dinov2_vits14_reg", family="dinov2", arch="vit_small_patch14_reg4_dinov2",
                arch_overrides={"depth": 2}, checkpoint="random-init:0", checkpoint_sha256="random-init:0",
                input_hw=(56, 84), patch_size=14, grid_hw=(4, 6), embed_dim=384, num_registers=4,
                mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), output="cls+patch", resize="bicubic")
    base.update(kw)
    return TeacherProvenance(**base)


def _open(path: Path, mode: str = "r") -> zarr.Group:
    kw = {"use_consolidated": False} if mode == "r" else {}
    return zarr.open_group(str(path), mode=mode, zarr_format=3, **kw)


@pytest.fixture
def store_copy(cached_store, tmp_path) -> Path:
    dst = tmp_path / "copy.zarr"
    shutil.copytree(cached_store, dst)
    return dst


def _rewrite_manifest(store: Path, **changes) -> None:
    meta_path = store / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"][MANIFEST_ATTR].update(changes)
    meta_path.write_text(json.dumps(meta))


# --------------------------------------------------------------------------------------------------- models


def test_manifest_round_trip():
    m = _manifest(status="complete", n_valid=9, n_rejected=1, version=2)
    data = m.model_dump(mode="json")
    assert data["image_hw"] == [56, 84] and data["schema_version"] == "distillkit-store/v1"
    json.dumps(data)  # JSON-serialisable as stored in zarr attributes
    back = Manifest.model_validate(json.loads(json.dumps(data)))
    assert back == m
    assert back.image_hw == (56, 84)


def test_provenance_round_trip_and_identity():
    p = _provenance()
    back = TeacherProvenance.model_validate(json.loads(json.dumps(p.model_dump(mode="json"))))
    assert back == p
    assert back.input_hw == (56, 84) and back.mean == (0.485, 0.456, 0.406)
    assert back.is_random_init
    assert not _provenance(checkpoint="w.pth", checkpoint_sha256="0" * 64).is_random_init
    ident = p.identity()
    assert "checkpoint_sha256" in ident and "distillkit_version" not in ident
    assert _provenance(distillkit_version="9.9").identity() == ident
    assert _provenance(checkpoint_sha256="random-init:1").identity() != ident


def test_manifest_rejects_duplicate_teachers():
    with pytest.raises(ValidationError, match="unique"):
        _manifest(teachers=["a", "b", "a"])


@pytest.mark.parametrize("field, value", [
    ("n_samples", 0), ("shard_size", 0), ("val_fraction", 1.0), ("teachers", []), ("status", "done"),
    ("schema_version", "distillkit-store/v2"), ("colour", "red")])
def test_manifest_rejects_bad_fields(field, value):
    with pytest.raises(ValidationError) as e:
        _manifest(**{field: value})
    assert field in str(e.value)


def test_provenance_rejects_unknown_fields_and_dtypes():
    with pytest.raises(ValidationError, match="surprise"):
        _provenance(surprise=1)
    with pytest.raises(ValidationError, match="dtype"):
        _provenance(dtype="bfloat16")


@pytest.mark.parametrize("n, shard", [(1, 1), (10, 4), (12, 4), (13, 4), (5, 64), (64, 64), (65, 64)])
def test_n_shards(n, shard):
    m = _manifest(n_samples=n, shard_size=shard)
    assert m.n_shards == math.ceil(n / shard)
    done = [s for s in expected_arrays(m, {m.teachers[0]: _provenance()}) if s.path == "progress/shard_done"][0]
    assert done.shape == (m.n_shards,)


def test_expected_arrays_layout():
    m = _manifest(n_samples=10, shard_size=4)
    specs = {s.path: s for s in expected_arrays(m, {"dinov2_vits14_reg": _provenance()})}
    assert len(specs) == len(expected_arrays(m, {"dinov2_vits14_reg": _provenance()}))  # unique paths
    patch = specs["teachers/dinov2_vits14_reg/patch"]
    assert patch.shape == (10, 4, 6, 384) and patch.chunks == (1, 4, 6, 384) and patch.shards == (4, 4, 6, 384)
    assert specs["samples/image"].shape == (10, 56, 84, 3)
    assert specs["teachers/dinov2_vits14_reg/stats/shard_patch_mean"].shape == (3, 384)
    assert list(specs)[-1] == "progress/shard_done"  # written last, created last
    for s in specs.values():
        assert len(s.dims) == len(s.shape) == len(s.chunks)


# --------------------------------------------------------------------------------------------------- structure


def test_validate_structure_good_store(cached_store):
    manifest, provs, problems = validate_structure(_open(cached_store))
    assert problems == []
    assert manifest is not None and manifest.status == "complete" and manifest.n_samples == 12
    assert manifest.teachers == [TEACHER]
    assert provs[TEACHER].grid_hw == (4, 4) and provs[TEACHER].is_random_init


def test_validate_structure_missing_array(store_copy):
    path = f"teachers/{TEACHER}/cls"
    shutil.rmtree(store_copy / path)
    _, _, problems = validate_structure(_open(store_copy))
    assert len(problems) == 1
    assert problems[0].where == path and "missing" in problems[0].what


def test_validate_structure_bad_manifest_field(store_copy):
    _rewrite_manifest(store_copy, n_samples=-1)
    manifest, _, problems = validate_structure(_open(store_copy))
    assert manifest is None
    assert len(problems) == 1 and problems[0].where == "/"
    assert "n_samples" in problems[0].what
    with pytest.raises(ValueError, match="n_samples"):
        read_manifest(_open(store_copy))


def test_validate_structure_missing_manifest(store_copy):
    meta = json.loads((store_copy / "zarr.json").read_text())
    del meta["attributes"][MANIFEST_ATTR]
    (store_copy / "zarr.json").write_text(json.dumps(meta))
    manifest, _, problems = validate_structure(_open(store_copy))
    assert manifest is None and "not a distillkit store" in problems[0].what


def test_validate_structure_bad_provenance(store_copy):
    g = _open(store_copy, "r+")
    prov = dict(g[f"teachers/{TEACHER}"].attrs[PROVENANCE_ATTR])
    del prov["embed_dim"]
    g[f"teachers/{TEACHER}"].attrs[PROVENANCE_ATTR] = prov
    _, _, problems = validate_structure(_open(store_copy))
    assert [p.where for p in problems] == [f"teachers/{TEACHER}"]
    assert "embed_dim" in problems[0].what


def test_validate_structure_wrong_dtype(store_copy):
    g = _open(store_copy, "r+")
    old = g["samples/split"]
    shape, chunks, dims, values = old.shape, old.chunks, old.metadata.dimension_names, old[:]
    del g["samples/split"]
    new = g.create_array("samples/split", shape=shape, chunks=chunks, dtype="int16", dimension_names=dims,
                         fill_value=0)
    new[:] = values.astype(np.int16)
    _, _, problems = validate_structure(_open(store_copy))
    assert len(problems) == 1, problems
    assert problems[0].where == "samples/split"
    assert "dtype" in problems[0].what and "int16" in problems[0].what and "uint8" in problems[0].what


def test_validate_structure_wrong_chunks_and_dims(store_copy):
    g = _open(store_copy, "r+")
    shape = g["samples/valid"].shape
    del g["samples/valid"]
    g.create_array("samples/valid", shape=shape, chunks=(3,), dtype="uint8", dimension_names=("row",), fill_value=0)
    _, _, problems = validate_structure(_open(store_copy))
    whats = [p.what for p in problems if p.where == "samples/valid"]
    assert len(problems) == 2 and len(whats) == 2
    assert any("chunks" in w for w in whats) and any("dimension_names" in w for w in whats)


# --------------------------------------------------------------------------------------------------- content


def test_validate_store_good(cached_store):
    seen = []
    assert validate_store(str(cached_store), progress=lambda d, t: seen.append((d, t))) == []
    assert seen[-1] == (3, 3)


def test_validate_store_nan_in_valid_sample(store_copy):
    g = _open(store_copy, "r+")
    m = read_manifest(g)
    valid = g["samples/valid"][:]
    row = int(np.flatnonzero(valid)[5])
    s = row // m.shard_size
    sl = slice(s * m.shard_size, min((s + 1) * m.shard_size, m.n_samples))
    arr = g[f"teachers/{TEACHER}/patch"]
    block = arr[sl]
    assert np.isfinite(block).all()
    block[row - sl.start] = np.nan
    arr[sl] = block
    problems = validate_store(str(store_copy))
    assert [p.where for p in problems] == [f"teachers/{TEACHER}/patch[{row}]"]
    assert "NaN" in problems[0].what


def test_validate_store_unfinished_shard(store_copy):
    g = _open(store_copy, "r+")
    g["progress/shard_done"][0] = 0
    problems = validate_store(str(store_copy))
    assert "progress/shard_done[0]" in [p.where for p in problems]
    assert all("shard_done[1]" not in p.where and "shard_done[2]" not in p.where for p in problems)


def test_validate_store_rejected_sample_needs_reason(store_copy):
    g = _open(store_copy, "r+")
    g["samples/valid"][1] = 0  # marked invalid, no error text, still holds data
    problems = {p.where: p.what for p in validate_store(str(store_copy))}
    assert "samples/error[1]" in problems
    assert f"teachers/{TEACHER}/patch[1]" in problems and "rejected sample holds data" in problems[
        f"teachers/{TEACHER}/patch[1]"]
    assert "/" in problems and "n_valid" in problems["/"]


def test_validate_store_not_a_store(tmp_path):
    problems = validate_store(str(tmp_path / "nothing.zarr"))
    assert len(problems) == 1 and isinstance(problems[0], Problem)


def test_summarize_good_store(cached_store):
    s = summarize(str(cached_store))
    assert s.completion == 100.0 and s.shards_done == s.n_shards == 3 and s.rejected == []
    paths = [a["path"] for a in s.arrays]
    assert f"teachers/{TEACHER}/patch" in paths and not any(a.get("missing") for a in s.arrays)


def test_summarize_reports_missing_array(store_copy):
    path = f"teachers/{TEACHER}/cls"
    shutil.rmtree(store_copy / path)
    entry = [a for a in summarize(str(store_copy)).arrays if a["path"] == path][0]
    assert entry.get("missing") is True


# --------------------------------------------------------------------------------------------------- CLI


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=120)


def test_cli_validate_good_and_broken(cached_store, store_copy):
    ok = _cli("validate", str(cached_store))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "valid" in ok.stdout

    path = f"teachers/{TEACHER}/cls"
    shutil.rmtree(store_copy / path)
    bad = _cli("validate", str(store_copy))
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert f"{path}: array is missing" in bad.stdout
    assert "1 problem(s)" in bad.stdout


def test_cli_inspect_json(cached_store):
    res = _cli("inspect", str(cached_store), "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert {"manifest", "arrays", "provenance"} <= set(data)
    assert data["completion_pct"] == 100
    assert data["manifest"]["n_samples"] == 12 and data["manifest"]["status"] == "complete"
    assert data["provenance"][TEACHER]["checkpoint_sha256"] == "random-init:0"
    assert {a["path"] for a in data["arrays"]} == {
        s.path for s in expected_arrays(Manifest.model_validate(data["manifest"]),
                                        {TEACHER: TeacherProvenance.model_validate(data["provenance"][TEACHER])})}


def test_cli_inspect_not_a_store(tmp_path):
    res = _cli("inspect", str(tmp_path / "nothing.zarr"))
    assert res.returncode == 2
    assert "cannot inspect" in res.stderr


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_row_checks_agree_with_numpy_across_scratch_blocks(dtype):
    from distillkit.store.validation import _SCRATCH, _finite_rows, _nan_rows

    width = _SCRATCH // np.dtype(dtype).itemsize // 3 + 1  # 2 rows per scratch block: 11 rows span 6 blocks
    x = np.random.default_rng(0).standard_normal((11, width)).astype(dtype)
    x[1, 0], x[4, -1], x[5, width // 2] = np.nan, np.inf, -np.inf
    x[7], x[8] = np.nan, -np.nan  # rejected rows (negative NaN too)
    x[9] = np.nan
    x[9, 3] = np.inf  # NaN throughout but one Inf: holds data
    assert (_finite_rows(x) == np.isfinite(x).all(axis=1)).all()
    assert (_nan_rows(x) == np.isnan(x).all(axis=1)).all()
    assert list(np.flatnonzero(_nan_rows(x))) == [7, 8]
    assert _finite_rows(x[:0]).shape == _nan_rows(x[:0]).shape == (0,)
