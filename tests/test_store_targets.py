"""A command writes only into a store it created or recognises (issue 21, class 1).

Every writing verb is pointed at every kind of target that is not its own store: it must exit 2 with one line naming
the path, and leave every byte and every modification time under the target's parent folder as it was (no store
written, no `<store>.lease` left beside it, no `zarr.json` rewritten). Its own targets (nothing, an empty folder,
its own interrupted creation) still work."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from conftest import TINY_TEACHER
from distillkit.cli import app
from distillkit.store.target import NotAStore, inspect_target

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()


def _project(p: Path) -> None:
    (p / "src").mkdir(parents=True)
    (p / "README.md").write_text("my project\n")
    (p / "src" / "train.py").write_text("print('hello')\n")
    (p / "data.csv").write_bytes(b"a,b\n1,2\n")


def _dotfile_only(p: Path) -> None:
    p.mkdir()
    (p / ".DS_Store").write_bytes(b"\0\1\2")


def _regular_file(p: Path) -> None:
    p.write_text("not a folder\n")


def _foreign_group(p: Path) -> None:
    g = zarr.open_group(str(p), mode="w", zarr_format=3)
    g.attrs["owner"] = "someone else"
    g.create_array("weights", shape=(4, 3), dtype="f4")[:] = np.arange(12, dtype="f4").reshape(4, 3)


def _foreign_array(p: Path) -> None:
    zarr.create_array(str(p), shape=(5,), dtype="i4", zarr_format=3)[:] = np.arange(5)


def _zarr_v2_group(p: Path) -> None:
    g = zarr.open_group(str(p), mode="w", zarr_format=2)
    g.create_array("x", shape=(3,), dtype="i2")[:] = [1, 2, 3]


def _damaged_json(p: Path) -> None:
    p.mkdir()
    (p / "zarr.json").write_text('{"zarr_format": 3, "node_type": "gro')


def _json_not_object(p: Path) -> None:
    p.mkdir()
    (p / "zarr.json").write_text("[1, 2, 3]")


def _other_kind_interrupted(kind: str) -> Callable[[Path], None]:
    def make(p: Path) -> None:
        g = zarr.open_group(str(p), mode="w", zarr_format=3)
        g.attrs["distillkit_creating"] = kind
        g.create_array("keep", shape=(2,), dtype="u1")[:] = [7, 8]
    return make


def _copy_of(fixture: str) -> Callable[[Path], None]:
    return lambda p, stores: shutil.copytree(stores[fixture], p)


# (name, builder, which verbs must refuse it): builders take (path) or (path, stores) for real stores
FOREIGN = {
    "project folder": _project,
    "folder holding only a dotfile": _dotfile_only,
    "regular file": _regular_file,
    "Zarr group distillkit did not create": _foreign_group,
    "Zarr array": _foreign_array,
    "Zarr v2 group": _zarr_v2_group,
    "damaged zarr.json": _damaged_json,
    "zarr.json that is not an object": _json_not_object,
}
OTHER_KIND = {  # refused by the verbs of the other kind only
    "features": {"feature store": _copy_of("features"), "interrupted feature store": _other_kind_interrupted("features")},
    "scenes": {"scene store": _copy_of("scenes"), "interrupted scene store": _other_kind_interrupted("scenes")},
}
EXPECT = {  # a word of the one-line message, per target
    "project folder": "not a distillkit store", "folder holding only a dotfile": "not a distillkit store",
    "regular file": "is a file", "Zarr group distillkit did not create": "did not create",
    "Zarr array": "holds a Zarr array", "Zarr v2 group": "not a distillkit store",
    "damaged zarr.json": "zarr.json is damaged", "zarr.json that is not an object": "zarr.json is damaged",
    "feature store": "is a features store", "interrupted feature store": "features store whose creation",
    "scene store": "is a scenes store", "interrupted scene store": "scenes store whose creation",
}


def _snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every entry under root: content digest (files), link target or 'dir', and modification time."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            st = p.lstat()
            what = ("dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest())
            out[str(p.relative_to(root))] = (what, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def stores(cached_store, oracle_scene_store) -> dict[str, Path]:
    return {"features": cached_store, "scenes": oracle_scene_store}


@pytest.fixture(scope="module")
def scene_dataset(tmp_path_factory) -> Path:
    from distillkit.scenes.synthetic import write_12scenes

    root = tmp_path_factory.mktemp("target_scenes")
    write_12scenes(root / "office" / "one", n_frames=4, color_hw=(48, 64), depth_hw=(24, 32), seed=2, n_test=1,
                   n_inf=0, n_holes=0)
    return root


def _verbs(photos: Path, scene_dataset: Path, tmp: Path) -> dict[str, tuple[str, Callable[[str], list[str]]]]:
    """verb -> (the kind it writes, argv for a target)."""
    cache_yaml = tmp / "cache.yaml"
    cache_yaml.write_text(f"source: {photos}\nteachers: [{json.dumps(TINY_TEACHER)}]\nimage_size: 56\n"
                          "shard_size: 4\nnum_workers: 1\ndevice: cpu\n")
    scenes_yaml = tmp / "scenes.yaml"
    scenes_yaml.write_text(f"source: {scene_dataset}\npredictor: gt-depth\nimage_size: 64\ngraph: complete\n"
                           "device: cpu\nalign: {pose_pixels: 256, max_iters: 5}\n")
    return {
        "cache": ("features", lambda t: ["cache", "-c", str(cache_yaml), "--store", t, "--quiet"]),
        "cache --repair": ("features", lambda t: ["cache", "-c", str(cache_yaml), "--store", t, "--repair",
                                                  "--quiet"]),
        "cache-scenes": ("scenes", lambda t: ["cache-scenes", "-c", str(scenes_yaml), "--store", t]),
        "align": ("scenes", lambda t: ["align", t]),
    }


CASES = [(verb, target) for verb in ("cache", "cache --repair", "cache-scenes", "align")
         for target in list(FOREIGN) + [t for kind, ts in OTHER_KIND.items() for t in ts]]


def _writes(verb: str) -> str:
    return "scenes" if verb in ("cache-scenes", "align") else "features"


@pytest.mark.parametrize("verb,target", [c for c in CASES
                                         if c[1] in FOREIGN or c[1] not in OTHER_KIND[_writes(c[0])]],
                         ids=lambda v: v.replace(" ", "_"))
def test_a_writing_verb_refuses_a_target_that_is_not_its_store(verb, target, stores, photos, scene_dataset,
                                                             tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    path = work / "target"
    builder = FOREIGN.get(target) or {**OTHER_KIND["features"], **OTHER_KIND["scenes"]}[target]
    builder(path) if target in FOREIGN or "interrupted" in target else builder(path, stores)
    before = _snapshot(work)
    _, argv = _verbs(photos, scene_dataset, tmp_path)[verb]
    res = runner.invoke(app, argv(str(path)))
    assert res.exit_code == 2, (res.exit_code, res.output)
    said = " ".join(res.output.split())
    assert str(path) in said and EXPECT[target] in said, said
    assert "Traceback" not in res.output
    assert _snapshot(work) == before  # not a byte, not an mtime: the target and its neighbours as they were


@pytest.mark.parametrize("target", ["missing", "empty folder", "interrupted creation"])
def test_cache_creates_where_nothing_or_its_own_interrupted_creation_is(target, photos, scene_dataset, tmp_path):
    path = tmp_path / "store.zarr"
    if target == "empty folder":
        path.mkdir()
    elif target == "interrupted creation":
        _other_kind_interrupted("features")(path)  # what a killed `cache` leaves: the creation mark of its kind
    _, argv = _verbs(photos, scene_dataset, tmp_path)["cache"]
    res = runner.invoke(app, argv(str(path)))
    assert res.exit_code == 0, res.output
    g = zarr.open_group(str(path), mode="r")
    assert g.attrs["distillkit"]["status"] == "complete" and "keep" not in g
    assert not Path(str(path) + ".lease").exists()


def test_cache_scenes_creates_in_an_empty_folder_and_resumes_its_own_store(scene_dataset, photos, tmp_path):
    path = tmp_path / "scenes.zarr"
    path.mkdir()
    _, argv = _verbs(photos, scene_dataset, tmp_path)["cache-scenes"]
    assert runner.invoke(app, argv(str(path))).exit_code == 0
    res = runner.invoke(app, argv(str(path)))  # a re-run recognises its own store
    assert res.exit_code == 0 and "nothing to do" in res.output, res.output


def test_inspect_target_states(tmp_path, cached_store):
    assert inspect_target(str(tmp_path / "absent"), "features") == "new"
    assert inspect_target(str(cached_store), "features") == "existing"
    legacy = tmp_path / "legacy"
    g = zarr.open_group(str(legacy), mode="w", zarr_format=3)
    g.attrs["distillkit_creating"] = True  # stores created before the kind was recorded
    assert inspect_target(str(legacy), "scenes") == inspect_target(str(legacy), "features") == "interrupted"
    with pytest.raises(NotAStore, match="is a features store .* not a scenes store"):
        inspect_target(str(cached_store), "scenes")
    with pytest.raises(NotAStore, match=r"it holds 'a', 'b', 'c' and 1 more"):
        (tmp_path / "four").mkdir()
        for n in "abcd":
            (tmp_path / "four" / n).write_text(n)
        inspect_target(str(tmp_path / "four"), "features")


@pytest.mark.slow
def test_s3_prefix_holding_user_objects_is_refused(s3_bucket, photos):
    import s3fs

    from conftest import tiny_cache_config
    from distillkit.cache import run_cache

    fs = s3fs.S3FileSystem()
    fs.pipe(f"{s3_bucket}/project/notes.txt", b"keep me")
    with pytest.raises(NotAStore, match=rf"s3://{s3_bucket}/project is a folder that is not a distillkit store"):
        run_cache(tiny_cache_config(photos, f"s3://{s3_bucket}/project"), show_progress=False)
    assert fs.find(f"{s3_bucket}/") == [f"{s3_bucket}/project/notes.txt"]
    assert fs.cat_file(f"{s3_bucket}/project/notes.txt") == b"keep me"
