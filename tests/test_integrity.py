"""Checksums end to end: a flipped byte in a feature shard or in a shard index is found by `validate --deep`
(naming the array, shard and sample), refused by the training reader, and `cache --repair` recomputes just it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from conftest import TINY_TEACHER, read_all, tiny_cache_config

from distillkit.cache import run_cache
from distillkit.cli import app
from distillkit.store.reader import ShardStream, StoreSource

runner = CliRunner()
TEACHER = TINY_TEACHER["name"]


@pytest.fixture(scope="module")
def pristine(photos, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("integrity")
    store = root / "pristine.zarr"
    cfg = tiny_cache_config(photos, store)
    run_cache(cfg, show_progress=False)
    cfg_file = root / "cache.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return store, cfg_file


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def _shard_file(store: Path, array: str, shard: int) -> Path:
    arr_dir = store / array / "c" / str(shard)
    files = [p for p in arr_dir.rglob("*") if p.is_file()]
    assert len(files) == 1, files
    return files[0]


def _damaged_copy(pristine: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    store, cfg_file = pristine
    copy = tmp_path / "damaged.zarr"
    shutil.copytree(store, copy)
    cfg = yaml.safe_load(cfg_file.read_text())
    cfg["store"] = str(copy)
    (tmp_path / "cache.yaml").write_text(yaml.safe_dump(cfg))
    # shard 0 of the patch tokens: a byte inside the first sample's data; shard 1: a byte of the shard index
    _flip(_shard_file(copy, f"teachers/{TEACHER}/patch", 0), 10)
    idx_file = _shard_file(copy, f"teachers/{TEACHER}/patch", 1)
    _flip(idx_file, idx_file.stat().st_size - 9)
    return copy, tmp_path / "cache.yaml"


def test_pristine_store_passes_deep_validation(pristine):
    res = runner.invoke(app, ["validate", str(pristine[0]), "--deep"])
    assert res.exit_code == 0, res.output
    assert "note" not in res.output  # written with checksums: nothing unverified


def test_deep_validation_names_array_shard_and_sample(pristine, tmp_path):
    store, _ = _damaged_copy(pristine, tmp_path)
    res = runner.invoke(app, ["validate", str(store), "--deep"])
    assert res.exit_code == 1, res.output
    out = " ".join(res.output.split())
    first_id = str(_ids(store)[0])
    assert f"teachers/{TEACHER}/patch: shard 0: checksum mismatch in sample(s) 0 ({first_id})" in out
    assert f"teachers/{TEACHER}/patch: shard 1: checksum mismatch in the shard index" in out
    assert "2 problem(s)" in out  # nothing else reported: the other shards and arrays are intact


def _ids(store: Path) -> np.ndarray:
    import zarr
    return zarr.open_group(str(store), mode="r")["samples/id"][:]


def test_reader_refuses_a_damaged_shard(pristine, tmp_path):
    store, _ = _damaged_copy(pristine, tmp_path)
    src = StoreSource(str(store))
    with pytest.raises(ValueError, match=r"shard 0.*checksum|checksum.*shard 0"):
        src.read(f"teachers/{TEACHER}/patch", 0, 4)
    stream = ShardStream([src], batch_size=4, split="all", shuffle=False)
    with pytest.raises(ValueError, match="checksum"):
        list(stream)


def test_repair_recomputes_only_the_damaged_shards(pristine, tmp_path):
    store, cfg_file = _damaged_copy(pristine, tmp_path)
    before = {p: p.read_bytes() for p in store.rglob("*") if p.is_file() and p.name != "zarr.json"}
    res = runner.invoke(app, ["cache", "--config", str(cfg_file), "--repair", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "repaired shard(s) [0, 1]" in res.output
    assert runner.invoke(app, ["validate", str(store), "--deep"]).exit_code == 0
    ref, got = read_all(pristine[0]), read_all(store)
    for k in ref:
        np.testing.assert_array_equal(ref[k], got[k], err_msg=k)
    # byte for byte as before, and every object outside shards 0 and 1 was left alone
    src_files = {p.relative_to(pristine[0]): p.read_bytes() for p in pristine[0].rglob("*")
                 if p.is_file() and p.name != "zarr.json"}
    for p, data in before.items():
        rel = p.relative_to(store)
        assert p.read_bytes() == src_files[rel], rel
        parts = rel.parts
        i = parts.index("c") if "c" in parts else len(parts)
        shard = int(parts[i + 1]) if i + 1 < len(parts) else None
        if shard not in (0, 1):
            assert p.read_bytes() == data, rel
    res = runner.invoke(app, ["cache", "--config", str(cfg_file), "--repair", "--quiet"])
    assert "nothing to repair" in res.output


def _fetched(monkeypatch) -> list[str]:
    """The storage keys every direct (one-request) read of a shard or chunk fetches."""
    from distillkit.store import direct

    keys: list[str] = []
    real = direct._fetch
    monkeypatch.setattr(direct, "_fetch", lambda store, key, *a: keys.append(key) or real(store, key, *a))
    return keys


def _shard_of(key: str) -> int:
    return int(key.split("/c/")[1].split("/")[0])


def test_a_shard_range_reads_only_its_shards_and_says_what_it_checked(pristine, tmp_path, monkeypatch):
    store, _ = _damaged_copy(pristine, tmp_path)  # shards 0 and 1 of the patch tokens are damaged
    keys = _fetched(monkeypatch)
    res = runner.invoke(app, ["validate", str(store), "--deep", "--shards", "2:"])
    assert res.exit_code == 0, res.output
    assert "checked 1 of 3 shards (shards 2:)" in " ".join(res.output.split())
    assert keys and {_shard_of(k) for k in keys} == {2}  # not one object of another shard
    every = len(keys)
    keys.clear()
    res = runner.invoke(app, ["validate", str(store), "--deep"])
    assert res.exit_code == 1 and "2 problem(s)" in " ".join(res.output.split())
    assert {_shard_of(k) for k in keys} == {0, 1, 2} and len(keys) >= 3 * every - 3


def _findings(said: str) -> str:
    return said[said.index("note"):]  # past the progress bar (its rates vary)


def test_a_seeded_sample_of_shards(pristine, tmp_path):
    store, _ = _damaged_copy(pristine, tmp_path)
    runs = [" ".join(runner.invoke(app, ["validate", str(store), "--sample", "1", "--seed", str(seed)]).output.split())
            for seed in range(6)]
    assert all("checked 1 of 3 shards (sample 1, seed" in r for r in runs)
    caught = [f"teachers/{TEACHER}/patch" in r for r in runs]
    assert any(caught) and not all(caught)  # the damaged shards 0-1 are found when the sample holds them
    again = " ".join(runner.invoke(app, ["validate", str(store), "--sample", "1", "--seed", "3"]).output.split())
    assert _findings(again) == _findings(runs[3])  # seeded: the same shards again
    assert "checked 3 of 3 shards" in " ".join(runner.invoke(app, ["validate", str(store), "--sample", "100%"])
                                               .output.split())
    for bad, said in (("--sample=150%", "--sample '150%'"), ("--shards=a:b", "--shards 'a:b'")):
        res = runner.invoke(app, ["validate", str(store), bad])
        assert res.exit_code == 2 and said in res.output, res.output


def test_arrays_are_opened_once_not_once_per_shard(pristine, monkeypatch):
    import zarr

    opened: list[str] = []
    real = zarr.Group.__getitem__
    monkeypatch.setattr(zarr.Group, "__getitem__", lambda self, k: opened.append(k) or real(self, k))
    counts = []
    for shards in ("0:1", "0:2"):
        opened.clear()
        assert runner.invoke(app, ["validate", str(pristine[0]), "--deep", "--shards", shards]).exit_code == 0
        counts.append(len(opened))
    assert counts[0] == counts[1], counts  # 1 shard or 2: the same opens
