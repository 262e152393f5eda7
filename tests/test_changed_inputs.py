"""A file replaced in place (same path, new picture) is noticed by a re-run and cached again (issue 21, class 3):
the store records what each file was (ETag, or size + mtime; a content digest with --rehash), the old row is
retired, the new content is appended as the next version, and readers serve the new features."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import zarr
from PIL import Image
from typer.testing import CliRunner

from conftest import TINY_TEACHER
from distillkit.cli import app

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()
COLOURS = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (90, 90, 90), (10, 100, 200)]


def _write(path, colour) -> None:
    Image.new("RGB", (64, 48), colour).save(path)


def _cache(tmp_path, source, *extra):
    (tmp_path / "t.yaml").write_text(f"teachers: [{json.dumps(TINY_TEACHER)}]\nval_fraction: 0.0\n")
    r = runner.invoke(app, ["cache", "-c", str(tmp_path / "t.yaml"), "--source", str(source), "--store",
                            str(tmp_path / "s.zarr"), "--image-size", "28", "--shard-size", "2", "--device", "cpu",
                            "--num-workers", "1", "--quiet", *extra])
    assert r.exit_code == 0, r.output
    return " ".join(r.output.split())


def _served(store) -> dict[str, tuple]:
    """id -> first pixel of the image the reader serves (valid rows of the current version)."""
    from distillkit.store.reader import StoreSource

    src = StoreSource(str(store))
    g = zarr.open_group(str(store), mode="r")
    return {str(g["samples/id"][r]): tuple(g["samples/image"][r, 0, 0]) for r in np.flatnonzero(src.valid)}


def _folder(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i, c in enumerate(COLOURS):
        _write(src / f"p{i}.png", c)
    return src


def test_a_file_replaced_in_place_is_cached_again(tmp_path):
    src = _folder(tmp_path)
    _cache(tmp_path, src)
    assert _served(tmp_path / "s.zarr")["p1.png"] == COLOURS[1]
    assert "nothing to do" in _cache(tmp_path, src)  # unchanged: a re-run does nothing
    _write(src / "p1.png", (250, 250, 0))
    os.utime(src / "p1.png", ns=(1, 2_000_000_000))  # a new mtime even on coarse clocks
    said = _cache(tmp_path, src)
    assert "1 file(s) replaced since they were cached" in said and "changed p1.png" in said, said
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    assert g.attrs["distillkit"]["version"] == 2
    served = _served(tmp_path / "s.zarr")
    assert served["p1.png"] == (250, 250, 0) and served["p0.png"] == COLOURS[0] and len(served) == 5
    old_row = g["samples/id"][:].tolist().index("p1.png")
    assert g["samples/valid"][old_row] == 0 and str(g["samples/error"][old_row]).startswith("replaced")
    assert runner.invoke(app, ["validate", str(tmp_path / "s.zarr"), "--deep"]).exit_code == 0
    assert "nothing to do" in _cache(tmp_path, src)  # and the next run is quiet again


def test_rehash_finds_a_replaced_file_of_a_manifest(tmp_path):
    src = _folder(tmp_path)
    manifest = tmp_path / "list.txt"
    manifest.write_text("".join(f"src/p{i}.png\n" for i in range(len(COLOURS))))
    _cache(tmp_path, manifest, "--rehash")
    stat = os.stat(src / "p3.png")
    _write(src / "p3.png", (1, 2, 3))
    os.utime(src / "p3.png", ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the same mtime: only the content says
    assert "nothing to do" in _cache(tmp_path, manifest)  # a manifest lists no signatures: nothing to compare
    said = _cache(tmp_path, manifest, "--rehash")
    assert "changed src/p3.png" in said, said
    assert _served(tmp_path / "s.zarr")["src/p3.png"] == (1, 2, 3)
