"""Stores that grow: a re-run over a source that gained images appends them (CLI, real SIGKILLs, real readers)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from PIL import Image
from typer.testing import CliRunner

from conftest import BIN, REPO, TINY_TEACHER, assert_same_files, read_all
from test_resume import _kill_when

from distillkit.cli import app
from distillkit.demo_data import load_photos
from distillkit.store.reader import ShardStream, StoreSource

runner = CliRunner()
T = TINY_TEACHER["name"]
ARGS = ["--image-size", "56", "--shard-size", "2", "--batch-size", "2", "--num-workers", "2", "--val-fraction",
        "0.25", "--quiet"]


def _write_photos(folder: Path, items) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in items:
        Image.fromarray(arr).convert("RGB").save(folder / f"{name}.png")


def _cfg(root: Path) -> Path:
    cfg = root / "teacher.yaml"
    cfg.write_text(yaml.safe_dump({"teachers": [TINY_TEACHER]}))
    return cfg


def _cache_args(source: Path, store: Path, cfg: Path, *extra: str) -> list[str]:
    return ["cache", "--source", str(source), "--store", str(store), "--config", str(cfg), *ARGS, *extra]


def _data_files(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*"))
            if p.is_file() and p.name != "zarr.json"}


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    """v1 over 5 photos, then the source gains 6 and `cache` runs again; plus a store cached once over all 11."""
    root = tmp_path_factory.mktemp("append")
    photos = list(load_photos().items())[:11]
    src, cfg = root / "src", _cfg(root)
    _write_photos(src, photos[:5])
    store = root / "grow.zarr"
    assert runner.invoke(app, _cache_args(src, store, cfg)).exit_code == 0
    v1_files, v1_arrays = _data_files(store), read_all(store)
    shutil.copytree(store, root / "v1.zarr")  # for the SIGKILL tests: the same version 1, same source paths
    v1_reader = StoreSource(str(store))  # opened on version 1, kept open across the append
    v1_batches = list(ShardStream([v1_reader], batch_size=3, split="all", shuffle=False))
    _write_photos(src, photos[5:])
    res = runner.invoke(app, _cache_args(src, store, cfg))
    assert res.exit_code == 0, res.output
    once = root / "once.zarr"
    assert runner.invoke(app, _cache_args(src, once, cfg)).exit_code == 0
    return dict(root=root, src=src, cfg=cfg, store=store, once=once, v1_files=v1_files, v1_arrays=v1_arrays,
                v1_reader=v1_reader, v1_batches=v1_batches, output=res.output, photos=photos)


def test_append_adds_new_shards_and_leaves_old_ones_untouched(grown):
    assert "6 new sample(s) appended as version 2" in grown["output"]
    after = _data_files(grown["store"])
    g = zarr.open_group(str(grown["store"]), mode="r")
    m = g.attrs["distillkit"]
    assert m["version"] == 2 and m["n_valid"] == 11 and m["n_rejected"] == 0 and m["status"] == "complete"
    assert g.attrs.get("distillkit_append") is None
    # every object of version 1 that is not a merged statistic (or the version's summary) is byte-identical
    changed = [k for k, v in grown["v1_files"].items()
               if after.get(k) != v and "/stats/" not in k and not k.startswith("summary/")]
    assert changed == [], changed
    # old rows keep their index, id and split; new samples start at the next shard boundary
    ids = g["samples/id"][:].tolist()
    old = grown["v1_arrays"]
    assert ids[:5] == old["samples/id"].tolist()
    np.testing.assert_array_equal(g["samples/split"][:5], old["samples/split"])
    assert ids[5] == "" and all(ids[6:])  # one padding row: 5 samples filled 3 shards of 2
    assert runner.invoke(app, ["validate", str(grown["store"]), "--deep"]).exit_code == 0
    m_once = zarr.open_group(str(grown["once"]), mode="r").attrs["distillkit"]
    assert m["source_fingerprint"] == m_once["source_fingerprint"]
    # a re-run over the same source is a no-op
    res = runner.invoke(app, _cache_args(grown["src"], grown["store"], grown["cfg"]))
    assert "nothing to do" in res.output
    assert_same_files(after, _data_files(grown["store"]))


def test_appended_features_match_a_store_cached_in_one_go(grown):
    g, o = zarr.open_group(str(grown["store"]), mode="r"), zarr.open_group(str(grown["once"]), mode="r")
    g_ids, o_ids = g["samples/id"][:].tolist(), o["samples/id"][:].tolist()
    assert sorted(i for i in g_ids if i) == sorted(o_ids)
    rows = [g_ids.index(i) for i in o_ids]
    np.testing.assert_array_equal(g["samples/split"][:][rows], o["samples/split"][:])
    for kind in ("patch", "cls"):
        a, b = g[f"teachers/{T}/{kind}"][:][rows].astype(np.float32), o[f"teachers/{T}/{kind}"][:].astype(np.float32)
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-3)  # fp16 rounding of the same forward
    for stat in ("patch_mean", "patch_std", "cls_mean", "cls_std"):
        np.testing.assert_allclose(g[f"teachers/{T}/stats/{stat}"][:], o[f"teachers/{T}/stats/{stat}"][:],
                                   rtol=1e-3, atol=1e-4)


def test_reader_opened_on_the_old_version_keeps_its_view(grown):
    again = list(ShardStream([grown["v1_reader"]], batch_size=3, split="all", shuffle=False))
    assert len(again) == len(grown["v1_batches"])
    for a, b in zip(again, grown["v1_batches"]):
        assert a["ids"] == b["ids"]
        for k in a:
            if k.startswith("teachers/") or k == "samples/image":
                assert (a[k] == b[k]).all(), k
    new = StoreSource(str(grown["store"]))
    assert new.manifest.version == 2 and int(new.valid.sum()) == 11


def test_removed_files_are_reported_kept_or_pruned(grown, tmp_path):
    store = tmp_path / "prune.zarr"
    shutil.copytree(grown["store"], store)
    src = tmp_path / "src"
    shutil.copytree(grown["src"], src)
    (src / "astronaut.png").unlink()
    res = runner.invoke(app, _cache_args(src, store, grown["cfg"]))
    assert res.exit_code == 0 and "gone from the source astronaut.png" in " ".join(res.output.split())
    assert zarr.open_group(str(store), mode="r").attrs["distillkit"]["version"] == 2  # kept: nothing changed
    res = runner.invoke(app, _cache_args(src, store, grown["cfg"], "--prune"))
    assert res.exit_code == 0, res.output
    g = zarr.open_group(str(store), mode="r")
    row = g["samples/id"][:].tolist().index("astronaut.png")
    assert g["samples/valid"][row] == 0 and str(g["samples/error"][row]).startswith("pruned")
    assert g.attrs["distillkit"]["version"] == 3 and g.attrs["distillkit"]["n_valid"] == 10
    # the sample index of this version and of the previous one (a reader may be opening it); older ones go
    assert g.attrs["distillkit"]["sample_index"] == "index/v3" and sorted(n for n, _ in g["index"].groups()) == [
        "v2", "v3"]
    assert g["index/v3/valid"][row] == 0 and g["index/v2/valid"][row] == 1
    assert runner.invoke(app, ["validate", str(store)]).exit_code == 0
    assert "astronaut.png" not in [i for b in ShardStream([StoreSource(str(store))], 4, "all") for i in b["ids"]]


def test_a_rerun_removes_metadata_temp_files_a_killed_run_left(grown, tmp_path):
    """zarr writes zarr.json through a temp file + rename: a SIGKILL while an append grows the arrays leaves one."""
    store = tmp_path / "debris.zarr"
    shutil.copytree(grown["store"], store)
    debris = [store / "samples/error/zarr.0123abcd.partial", store / "zarr.4567cdef.partial"]
    for d in debris:
        d.write_text('{"zarr_format": 3')
    before = _data_files(store)
    res = runner.invoke(app, _cache_args(grown["src"], store, grown["cfg"]))
    assert res.exit_code == 0 and "nothing to do" in res.output, res.output
    assert not any(d.exists() for d in debris)
    assert_same_files({k: v for k, v in before.items() if not k.endswith(".partial")}, _data_files(store))


def test_append_refuses_another_teacher_configuration(grown, tmp_path):
    store = tmp_path / "other.zarr"
    shutil.copytree(grown["store"], store)
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"teachers": [{**TINY_TEACHER, "seed": 7}]}))
    (grown["src"] / "new.png").write_bytes((grown["src"] / "coins.png").read_bytes())
    try:
        res = runner.invoke(app, _cache_args(grown["src"], store, other))
    finally:
        (grown["src"] / "new.png").unlink()
    assert res.exit_code != 0 and "checkpoint_sha256" in res.output and "refusing to mix" in res.output


def _cli() -> list[str]:
    exe = BIN / "distillkit"
    return [str(exe)] if exe.exists() else ["python", "-m", "distillkit.cli"]


def _intent(store: Path) -> bool:
    try:
        return json.loads((store / "zarr.json").read_text())["attributes"].get("distillkit_append") is not None
    except (OSError, ValueError, KeyError):
        return False


def _new_done(store: Path) -> int:
    try:
        return int(zarr.open_group(str(store), mode="r", use_consolidated=False)["progress/shard_done"][3:].sum())
    except Exception:
        return -1


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["growing", "after_first_new_shard"])
def test_sigkilled_append_rerun_is_byte_identical(grown, tmp_path, moment):
    store = tmp_path / "killed.zarr"
    shutil.copytree(grown["root"] / "v1.zarr", store)
    cmd = [*_cli(), *_cache_args(grown["src"], store, grown["cfg"])]
    condition = (lambda: _intent(store)) if moment == "growing" else (lambda: _new_done(store) >= 1)
    ended = _kill_when(cmd, store, condition)
    assert not ended and _intent(store), f"the append was not killed, nothing was tested: {ended}"
    mid = StoreSource(str(store))  # a reader opened while the append is unfinished serves version 1
    assert mid.manifest.version == 1 and len(mid.ids) == 5
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    ref, got = read_all(grown["store"]), read_all(store)
    assert ref.keys() == got.keys()
    for k in ref:
        np.testing.assert_array_equal(ref[k], got[k], err_msg=k)
    assert_same_files(_data_files(grown["store"]), _data_files(store))


def test_repair_of_a_grown_store_keeps_each_row_its_own_sample(grown, tmp_path):
    """After an append a row's number is not its place in the sorted listing (new ids sort between old ones, and
    padding sits between the versions): `cache --repair` must recompute a damaged shard for the samples its rows
    hold, not for the listing's rows at those numbers, recover a damaged id column from the sample index, and
    leave a replaced file's old row retired."""
    store, src = tmp_path / "repair.zarr", tmp_path / "src"
    shutil.copytree(grown["store"], store)
    shutil.copytree(grown["src"], src)
    name, arr = grown["photos"][0]  # replaced in place: version 3 retires its row and caches the new picture
    Image.fromarray(arr[::-1]).convert("RGB").save(src / f"{name}.png")
    assert runner.invoke(app, _cache_args(src, store, grown["cfg"])).exit_code == 0
    want = read_all(store)
    ids = want["samples/id"].tolist()
    old_row = ids.index(f"{name}.png")
    assert want["samples/error"][old_row].startswith("replaced") and ids.count(f"{name}.png") == 2
    listed = sorted(set(i for i in ids if i))
    shards = sorted({s for s in range(len(ids) // 2) if ids[2 * s:2 * s + 2] != listed[2 * s:2 * s + 2]}
                    | {old_row // 2})
    for s in shards:  # a flipped byte in each such shard's patch tokens and sample ids
        for array in (f"teachers/{T}/patch", "samples/id"):
            f = store / array / "c" / str(s)
            f = f if f.is_file() else next(p for p in f.rglob("*") if p.is_file())
            data = bytearray(f.read_bytes())
            data[len(data) // 2] ^= 0x40
            f.write_bytes(bytes(data))
    assert runner.invoke(app, ["validate", str(store), "--deep"]).exit_code == 1
    res = runner.invoke(app, _cache_args(src, store, grown["cfg"], "--repair", "--quiet"))
    assert res.exit_code == 0, res.output
    assert runner.invoke(app, ["validate", str(store), "--deep"]).exit_code == 0
    got = read_all(store)
    for k in ("samples/id", "samples/uri", "samples/split", "samples/view_seed", "samples/valid", "samples/error"):
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    ok = want["samples/valid"].astype(bool)
    np.testing.assert_allclose(got[f"teachers/{T}/patch"][ok].astype(np.float32),
                               want[f"teachers/{T}/patch"][ok].astype(np.float32), rtol=2e-3, atol=2e-3)
