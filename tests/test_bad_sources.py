"""Bad sources, manifests, configs and scene datasets through the CLI (issue 21, classes 4 and 5).

Each case runs one `distillkit` command on inputs made for it and asserts the exit code, that the output names the
file, line or field, that no traceback is printed, and that nothing outside the command's own output appeared or
changed. "skip" cases are runs that go on: the bad frame or file is named in a warning and left out."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import TINY_TEACHER
from distillkit.cli import app

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()
CACHE = ["--image-size", "28", "--shard-size", "4", "--num-workers", "1", "--device", "cpu", "--quiet"]


def _img(path: Path, colour=(200, 20, 20)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), colour).save(path)


def _images(root: Path) -> Path:
    for i in range(3):
        _img(root / "imgs" / f"p{i}.png", (60 * i, 100, 30))
    return root / "imgs"


def _cache(source: str, root: Path, *extra: str) -> list[str]:
    cfg = root / "teacher.yaml"
    cfg.write_text(f"teachers: [{json.dumps(TINY_TEACHER)}]\n")
    return ["cache", "-c", str(cfg), "--source", source, "--store", str(root / "out.zarr"), *CACHE, *extra]


def _manifest(name: str, body: bytes) -> Callable[[Path], list[str]]:
    def build(root: Path) -> list[str]:
        _images(root)
        (root / name).write_bytes(body)
        return _cache(str(root / name), root)
    return build


def _config(line: str) -> Callable[[Path], list[str]]:
    def build(root: Path) -> list[str]:
        _images(root)
        (root / "bad.yaml").write_text(f"source: {root / 'imgs'}\nstore: {root / 'out.zarr'}\n"
                                       f"teachers: [{json.dumps(TINY_TEACHER)}]\n{line}\n")
        return ["cache", "-c", str(root / "bad.yaml"), "--quiet"]
    return build


def _scene(edit: Callable[[Path], None], layout: str = "12scenes") -> Callable[[Path], list[str]]:
    def build(root: Path) -> list[str]:
        from distillkit.scenes.synthetic import write_7scenes, write_12scenes

        writer = write_12scenes if layout == "12scenes" else write_7scenes
        writer(root / "ds" / "office" / "one", n_frames=6, color_hw=(48, 64), depth_hw=(24, 32), seed=5, n_test=1,
               n_inf=0, n_holes=0)
        edit(root / "ds" / "office" / "one")
        (root / "s.yaml").write_text(f"source: {root / 'ds'}\nstore: {root / 'out.zarr'}\npredictor: gt-depth\n"
                                     "image_size: 64\ngraph: complete\ndevice: cpu\nmax_frames: null\n"
                                     "align: {pose_pixels: 256, max_iters: 5}\n")
        return ["cache-scenes", "-c", str(root / "s.yaml")]
    return build


def _frame_file(scene: Path, k: int, suffix: str) -> Path:
    return scene / "data" / f"frame-{k:06d}.{suffix}"


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _drop_info_line(key: str) -> Callable[[Path], None]:
    def edit(scene: Path) -> None:
        info = scene / "info.txt"
        info.write_text("".join(ln + "\n" for ln in info.read_text().splitlines() if not ln.startswith(key)))
    return edit


def _pose(k: int, text: str) -> Callable[[Path], None]:
    return lambda scene: _frame_file(scene, k, "pose.txt").write_text(text)


def _depth(k: int, hw: tuple[int, int]) -> Callable[[Path], None]:
    return lambda scene: Image.fromarray(np.full(hw, 1500, np.uint16)).save(_frame_file(scene, k, "depth.png"))


def _not_utf8_name(root: Path) -> list[str]:
    folder = _images(root)
    os.rename(folder / "p1.png", os.path.join(os.fsencode(folder), b"caf\xe9.png"))
    return _cache(str(folder), root)


def _glob_like_folder(root: Path) -> list[str]:
    for i in range(2):
        _img(root / "shots [2024]" / f"a{i}.png")
    return _cache(str(root / "shots [2024]"), root)


def _checkpoint_folder(root: Path) -> list[str]:
    folder = _images(root)
    return ["cache", "--source", str(folder), "--store", str(root / "out.zarr"), "--teacher", "dinov2_vits14_reg",
            "--checkpoint", str(folder), *CACHE]


def _train_out_is_a_file(root: Path, store: Path) -> list[str]:
    (root / "results").write_text("not a folder")
    return ["train", "--store", str(store), "--out", str(root / "results"), "--max-steps", "1", "--device", "cpu"]


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[..., list[str]]
    expect: str  # error | skip | ok
    says: str  # in the output ("{root}" is the case's folder)
    writes: str | None = "out.zarr"  # what the command may create (a skip/ok run writes its store)


CASES = [
    # manifests
    Case("JSONL manifest with a numeric id", _manifest("m.jsonl", b'{"id": 5, "uri": "imgs/p0.png"}\n'), "error",
         "m.jsonl, line 1: 'id' must be a string, got 5"),
    Case("JSONL manifest with a null uri", _manifest("m.jsonl", b'{"id": "a", "uri": null}\n'), "error",
         "m.jsonl, line 1: 'uri' is missing or empty"),
    Case("JSONL manifest row that is not an object", _manifest("m.jsonl", b'["imgs/p0.png"]\n'), "error",
         "m.jsonl, line 1: expected a JSON object"),
    Case("JSONL manifest row that is not JSON", _manifest("m.jsonl", b'{"uri": "imgs/p0.png"}\n{oops\n'), "error",
         "m.jsonl, line 2: expected a JSON object"),
    Case("manifest that is not UTF-8", _manifest("m.txt", b"imgs/p0.png\nimgs/caf\xe9.png\n"), "error",
         "m.txt, line 2: not UTF-8 text"),
    Case("CSV manifest without a uri column", _manifest("m.csv", b"id,path\na,imgs/p0.png\n"), "error",
         "m.csv: CSV needs a header with a 'uri' column"),
    Case("CSV manifest with an empty uri", _manifest("m.csv", b"id,uri\na,imgs/p0.png\nb,\n"), "error",
         "m.csv, line 3: 'uri' is missing or empty"),
    Case("CSV manifest with a UTF-8 byte-order mark", _manifest("m.csv", b"\xef\xbb\xbfid,uri\na,imgs/p0.png\n"),
         "ok", "1 valid"),
    Case("source folder whose name looks like a glob", _glob_like_folder, "ok", "2 valid"),
    Case("file name that is not UTF-8", _not_utf8_name, "skip", "the file name is not valid UTF-8"),
    Case("source that does not exist", lambda root: _cache(str(root / "nowhere"), root), "error",
         "nowhere' does not exist", None),
    Case("empty source folder", lambda root: (root / "empty").mkdir() or _cache(str(root / "empty"), root), "error",
         "holds no images", None),
    # configs
    Case("image size 0", _config("image_size: 0"), "error", "image_size: image size must be positive", None),
    Case("negative image width", _config("image_size: 28x-14"), "error",
         "image_size: image size must be positive", None),
    Case("image size that is not a size", _config("image_size: big"), "error", "image_size: image size must be N or HxW",
         None),
    Case("shard size 0", _config("shard_size: 0"), "error", "shard_size: Input should be greater than or equal to 1",
         None),
    Case("unknown storage codec", _config("codec: brotli"), "error", "codec", None),
    Case("checkpoint path that is a folder", _checkpoint_folder, "error", "Is a directory", None),
    # scene datasets
    Case("info.txt without the colour intrinsics", _scene(_drop_info_line("m_calibrationColorIntrinsic")), "error",
         "info.txt: no 'm_calibrationColorIntrinsic", None),
    Case("info.txt without the image height", _scene(_drop_info_line("m_colorHeight")), "error",
         "info.txt: no 'm_colorHeight", None),
    Case("info.txt with a malformed depth shift",
         _scene(lambda s: (s / "info.txt").write_text((s / "info.txt").read_text().replace(
             "m_depthShift = 1000", "m_depthShift = lots"))), "error", "'m_depthShift = lots' is not a valid value",
         None),
    Case("truncated colour frame", _scene(lambda s: _truncate(_frame_file(s, 2, "color.jpg"))), "skip",
         "frame-000002.color.jpg does not decode"),
    Case("pose with NaN entries", _scene(_pose(3, "nan 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n")), "skip",
         "frame-000003.pose.txt has NaN entries"),
    Case("pose that is not a rigid motion", _scene(_pose(3, "5 5 5 5\n5 5 5 5\n5 5 5 5\n0 0 0 1\n")), "skip",
         "frame-000003.pose.txt has not a rigid camera-to-world matrix"),
    Case("pose file with too few numbers", _scene(_pose(4, "1 0 0\n0 1 0\n")), "skip",
         "frame-000004.pose.txt has 6 numbers, not 16"),
    Case("depth map of another shape", _scene(_depth(1, (10, 10))), "skip",
         "frame-000001.depth.png is 10x10, the dataset's depth maps are 24x32"),
    Case("depth map with colour channels",
         _scene(lambda s: Image.new("RGB", (32, 24)).save(_frame_file(s, 1, "depth.png"))), "skip",
         "has 3 channels"),
]


def _snapshot(root: Path, skip: str | None) -> dict[str, str]:
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if skip and (rel == skip or rel.startswith(skip + os.sep)):
                continue
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() + f":{p.stat().st_mtime_ns}"
    return out


def test_the_corpus_has_every_class():
    assert len(CASES) >= 25 and {c.expect for c in CASES} == {"error", "skip", "ok"}


@pytest.mark.parametrize("case", CASES, ids=[c.name.replace(" ", "_") for c in CASES])
def test_bad_source(case: Case, tmp_path):
    argv = case.build(tmp_path)
    before = _snapshot(tmp_path, case.writes)
    r = runner.invoke(app, argv)
    said = " ".join(r.output.split())
    assert r.exit_code == (2 if case.expect == "error" else 0), (r.exit_code, said)
    assert case.says in said, said
    assert "Traceback" not in r.output
    if case.expect == "error":
        assert not (tmp_path / "out.zarr").exists() or case.writes is None
    assert _snapshot(tmp_path, case.writes) == before  # the inputs are untouched; only the store was written


def test_train_out_that_is_a_file_is_named(cached_store, tmp_path):
    argv = _train_out_is_a_file(tmp_path, cached_store)
    r = runner.invoke(app, argv)
    assert r.exit_code == 2 and str(tmp_path / "results") in " ".join(r.output.split()), r.output
    assert (tmp_path / "results").read_text() == "not a folder"
