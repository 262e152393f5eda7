"""The bad-input corpus: every kind of odd or broken input in one table. One `run_cache` over a folder holding all
of them and one over a JSONL manifest listing them (plus rows only a manifest can have) must both complete: odd but
decodable images are cached correctly, each bad one is reported with its file and reason. Config mistakes fail
early, naming the file, the field and what would be valid."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import socket
import struct
import subprocess
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import zarr
from PIL import Image

from conftest import BIN, REPO, TINY_TEACHER, tiny_cache_config
from distillkit.sources import BadImage, load_rgb

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RED, GREEN, BLUE = (220, 30, 30), (30, 200, 40), (20, 40, 210)
DEEP = (1000, 30000, 60000)  # 16-bit: round(v / 257) = (4, 117, 233); Pillow's high byte alone gives (3, 117, 234)


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def _png_raw(w: int, h: int, depth: int, colour_type: int, rows: bytes) -> bytes:
    """A PNG written by hand (Pillow cannot write 16-bit colour, nor lie about its size)."""
    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b"")


def _png16(channels: tuple[int, ...], hw=(20, 30)) -> bytes:
    h, w = hw
    px = np.array(channels, ">u2").tobytes() * w
    return _png_raw(w, h, 16, {3: 2, 4: 6}[len(channels)], (b"\0" + px) * h)


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


def _solid(rgb, hw=(24, 32), mode="RGB") -> Image.Image:
    return Image.new(mode, (hw[1], hw[0]), rgb)


def _frames(fmt: str, **kw) -> bytes:
    first, *rest = [_solid(c) for c in (RED, GREEN, BLUE)]
    return _save(first, fmt, save_all=True, append_images=rest, **kw)


def _palette_with_transparency() -> bytes:
    pal = Image.fromarray(np.zeros((16, 16), np.uint8), mode="P")
    pal.putpalette([*RED, 0, 0, 0] + [0] * (254 * 3))
    return _save(pal, "PNG", transparency=1)


def _truncated() -> bytes:
    full = _save(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)), "JPEG")
    return full[: len(full) // 2]


@dataclass(frozen=True)
class Kind:
    name: str
    path: str | None  # in the corpus folder (None: a manifest row or a config)
    make: Callable[[Path], None] | None
    expect: str  # cached | rejected | manifest | config
    reason: str = ""  # part of the reported reason
    colour: tuple | None = None  # cached: every stored pixel, within `tol`
    tol: int = 0


def _bytes(data_fn):
    return lambda p: p.write_bytes(data_fn())


def _link(target: str):
    return lambda p: os.symlink(target, p)


def _loop(p: Path):
    os.symlink(p.name + ".other", p)
    os.symlink(p.name, str(p) + ".other")  # a.jpg -> a.jpg.other -> a.jpg


KINDS = [
    # decodable but odd: cached, and correctly
    Kind("animated GIF: first frame", "anim.gif", _bytes(lambda: _frames("GIF")), "cached", colour=RED, tol=3),
    Kind("animated WebP: first frame", "anim.webp", _bytes(lambda: _frames("WEBP", lossless=True)), "cached",
         colour=RED),
    Kind("multi-page TIFF: first page", "pages.tif", _bytes(lambda: _frames("TIFF")), "cached", colour=RED),
    Kind("CMYK JPEG", "cmyk.jpg", _bytes(lambda: _save(_solid(RED).convert("CMYK"), "JPEG", quality=95)), "cached",
         colour=RED, tol=4),
    Kind("16-bit grayscale PNG", "gray16.png",
         _bytes(lambda: _save(Image.fromarray(np.full((20, 30), 30000, np.uint16)), "PNG")), "cached",
         colour=(117, 117, 117)),
    Kind("16-bit RGB PNG: all 16 bits scaled", "rgb16.png", _bytes(lambda: _png16(DEEP)), "cached",
         colour=(4, 117, 233)),
    Kind("16-bit RGBA PNG (opaque)", "rgba16.png", _bytes(lambda: _png16((*DEEP, 65535))), "cached",
         colour=(4, 117, 233)),
    Kind("palette PNG with a transparent index", "palette.png", _bytes(_palette_with_transparency), "cached",
         colour=RED),
    Kind("PNG bytes behind a .jpg name", "really_png.jpg", _bytes(lambda: _save(_solid(GREEN), "PNG")), "cached",
         colour=GREEN),
    Kind("1x1 pixel image", "dot.png", _bytes(lambda: _save(_solid(BLUE, (1, 1)), "PNG")), "cached", colour=BLUE),
    Kind("file name with spaces", "with some spaces.png", _bytes(lambda: _save(_solid(GREEN), "PNG")), "cached",
         colour=GREEN),
    Kind("unicode file name", "café_日本_\u2028.png", _bytes(lambda: _save(_solid(BLUE), "PNG")), "cached",
         colour=BLUE),
    Kind("newline in the file name", "two\nlines.png", _bytes(lambda: _save(_solid(RED), "PNG")), "cached",
         colour=RED),
    # unusable: reported with the file and the reason, the run goes on
    Kind("empty file", "empty.jpg", _bytes(lambda: b""), "rejected", "empty file"),
    Kind("truncated JPEG", "truncated.jpg", _bytes(_truncated), "rejected", "truncated"),
    Kind("text behind an image name", "notes.png", _bytes(lambda: b"just some words\n" * 9), "rejected",
         "not an image"),
    Kind("decompression bomb: PNG header claims 50000x50000", "bomb.png",
         _bytes(lambda: _png_raw(50000, 50000, 8, 2, b"\0" * 64)), "rejected", "image too large"),
    Kind("PNG header claiming 0 pixels wide", "zero.png", _bytes(lambda: _png_raw(0, 8, 8, 2, b"")), "rejected",
         "not an image"),
    Kind("a directory named x.jpg", "x.jpg", lambda p: p.mkdir(), "rejected", "is a directory"),
    Kind("symlink loop", "loop.jpg", _loop, "rejected", "symlink loop"),
    Kind("dangling symlink", "dangling.png", _link("gone.png"), "rejected", "dangling symlink"),
    # rows only a manifest can have
    Kind("manifest row whose file is missing", None, None, "manifest", "file not found"),
    Kind("unreachable URL: refused quickly, bounded retries", None, None, "manifest", "unreachable after 3 attempts"),
    Kind("duplicate id in a manifest: first row kept, the other reported", None, None, "manifest", "appears twice"),
    # config mistakes: fail before any work, naming the file and the field
    Kind("unknown config field", None, None, "config", "batch_sise: unknown field (did you mean 'batch_size'?)"),
    Kind("mistyped config value", None, None, "config", "shard_size: Input should be a valid integer"),
    Kind("image size not a multiple of the patch", None, None, "config",
         "image_size 230x336 must be a multiple of student_patch 14 (nearest valid: height 230 -> 224 or 238)"),
]
BY_NAME = {k.name: k for k in KINDS}


def test_the_corpus_has_at_least_20_kinds():
    assert len(KINDS) == len(BY_NAME) >= 20


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    from distillkit.cache import run_cache

    root = tmp_path_factory.mktemp("bad")
    corpus = root / "corpus"
    corpus.mkdir()
    for k in KINDS:
        if k.make:
            k.make(corpus / k.path)
    rows = [{"id": k.path, "uri": f"corpus/{k.path}"} for k in KINDS if k.path]
    url = f"http://127.0.0.1:{_closed_port()}/photo.jpg"
    rows += [{"id": "missing", "uri": "no_such_file.jpg"}, {"id": "url", "uri": url},
             {"id": "dup.png", "uri": "corpus/dot.png"}, {"id": "dup.png", "uri": "corpus/with some spaces.png"}]
    manifest = root / "list.jsonl"
    manifest.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    # the folder through the library (log records), the manifest through `distillkit cache` (its printed report)
    store = root / "folder.zarr"
    handler = _Lines()
    logging.getLogger("distillkit").addHandler(handler)
    try:
        result = run_cache(tiny_cache_config(corpus, store, shard_size=8, val_fraction=0.0), show_progress=False)
    finally:
        logging.getLogger("distillkit").removeHandler(handler)
    out = {"folder": {"fin": result["finalize"], "store": store, "log": handler.lines,
                      "rejected": {r["id"]: r for r in result["rejected"]}}}
    store = root / "manifest.zarr"
    cfg = root / "cache.yaml"
    cfg.write_text(f"source: {manifest}\nstore: {store}\nteachers: [{json.dumps(TINY_TEACHER)}]\nimage_size: 56\n"
                   "shard_size: 8\nval_fraction: 0.0\nnum_workers: 2\nbatch_size: 4\n")
    proc = subprocess.run([str(BIN / "distillkit"), "cache", "--config", str(cfg), "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    g = zarr.open_group(str(store), mode="r")
    fin = {**g.attrs["distillkit"], "status": g.attrs["distillkit"]["status"]}
    bad = np.flatnonzero(g["samples/valid"][:] == 0)
    ids, uris, errors = g["samples/id"][:], g["samples/uri"][:], g["samples/error"][:]
    out["manifest"] = {"fin": fin, "store": store, "log": [" ".join((proc.stdout + proc.stderr).split())],
                       "rejected": {str(ids[i]): {"uri": str(uris[i]), "reason": str(errors[i])} for i in bad}}
    for r in out.values():
        r["group"] = zarr.open_group(str(r["store"]), mode="r")
        r["ids"] = r["group"]["samples/id"][:].tolist()
    out["url"] = url
    return out


@pytest.mark.parametrize("run", ["folder", "manifest"])
def test_both_runs_complete_and_the_store_is_valid(runs, run):
    from distillkit.stores import validate_store

    r = runs[run]
    fin = r["fin"]
    assert fin["status"] == "complete", fin
    n_bad = sum(k.expect == "rejected" for k in KINDS)
    n_bad += 2 if run == "manifest" else 0  # the missing file and the URL
    assert fin["n_rejected"] == n_bad and fin["n_valid"] == sum(k.expect == "cached" for k in KINDS) + (
        run == "manifest"), fin
    assert validate_store(str(r["store"])) == []


@pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])
def test_kind(kind: Kind, runs, tmp_path):
    if kind.expect in ("cached", "rejected"):
        for run in ("folder", "manifest"):
            r = runs[run]
            assert kind.path in r["ids"], (run, r["ids"])  # names with spaces/unicode/newlines survive listing
            row = r["ids"].index(kind.path)
            valid = bool(r["group"]["samples/valid"][row])
            if kind.expect == "cached":
                assert valid and kind.path not in r["rejected"], (run, r["rejected"].get(kind.path))
                img = r["group"]["samples/image"][row].astype(int)
                assert np.abs(img - np.array(kind.colour)).max() <= kind.tol, (run, img.reshape(-1, 3)[:3])
            else:
                rej = r["rejected"][kind.path]
                assert not valid and kind.reason in rej["reason"], (run, rej)
                assert rej["uri"].endswith(kind.path)  # the file is named
                said = " ".join(f"{rej['uri']}: {rej['reason']}".split())  # the log line / the CLI's report
                assert any(said in " ".join(ln.split()) for ln in r["log"]), (said, r["log"])
    elif kind.expect == "manifest":
        r = runs["manifest"]
        if "missing" in kind.name:
            rej = r["rejected"]["missing"]
            assert rej["uri"].endswith("no_such_file.jpg") and kind.reason in rej["reason"], rej
        elif "URL" in kind.name:
            rej = r["rejected"]["url"]
            assert rej["uri"] == runs["url"] and kind.reason in rej["reason"], rej
            t0 = time.perf_counter()
            with pytest.raises(BadImage, match="Cannot connect"):
                load_rgb(runs["url"])
            assert time.perf_counter() - t0 < 5
        else:  # the first row of the id is cached, the second is reported with both files
            row = r["ids"].index("dup.png")
            assert r["ids"].count("dup.png") == 1 and str(r["group"]["samples/uri"][row]).endswith("dot.png")
            assert re.search(r"skipping \S+with some spaces.png: sample id 'dup.png' appears twice \(first: \S+dot.png",
                             r["log"][0]), r["log"]
    else:
        _check_config_kind(kind, tmp_path)


def _check_config_kind(kind: Kind, tmp_path: Path):
    from distillkit.config.cache import CacheConfig
    from distillkit.config.common import load_config

    lines = {"unknown": "batch_sise: 8\n", "mistyped": "shard_size: lots\n", "multiple": "image_size: 230x336\n"}
    key = next(k for k in lines if k in kind.name)
    path = tmp_path / "cache.yaml"
    path.write_text("source: imgs\nstore: out.zarr\nteachers: [dinov2_vits14]\n" + lines[key])
    with pytest.raises(ValueError) as e:
        load_config(CacheConfig, path)
    assert str(path) in str(e.value) and kind.reason in str(e.value), str(e.value)
