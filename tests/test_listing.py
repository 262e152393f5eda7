"""A source listing held as columns (issue 20: never 20 M Python objects at once where a stream will do)."""

from __future__ import annotations

import hashlib
import json
import logging
import tracemalloc

import numpy as np
import pytest
from fsspec.implementations.local import LocalFileSystem

from distillkit.sources import list_source
from distillkit.sources import listing as listing_module
from distillkit.sources.listing import Listing
from distillkit.store import ids as ids_module
from distillkit.store.ids import sorted_matches, str_column

# ids of 1 to 40 characters, some of them 4 bytes in UTF-8: numpy keeps values over 15 bytes outside the array
CHARS = "abcAZ/_.-é漢\u2028😀 0"


def _random_ids(rng, n: int, longest: int = 40) -> list[str]:
    return ["".join(rng.choice(list(CHARS), int(rng.integers(1, longest + 1)))) for _ in range(n)]


def test_listing_sorts_and_drops_repeats_like_python_and_keeps_the_fingerprint(caplog):
    rng = np.random.default_rng(1)
    ids = _random_ids(rng, 3000, longest=3) + _random_ids(rng, 3000)  # short ones repeat often
    rows = [(i, f"/data/{k}.png", ["", "stat:12:3.5", "etag:abc"][k % 3]) for k, i in enumerate(ids)]
    with caplog.at_level(logging.WARNING, logger="distillkit"):
        got = Listing.from_rows(iter(rows)).sort_unique("src")
    by_id = sorted(rows, key=lambda r: r[0])  # Python: code point order; a stable sort keeps each id's first row
    want = [r for k, r in enumerate(by_id) if k == 0 or r[0] != by_id[k - 1][0]]
    assert list(zip(got.ids.tolist(), got.uris.tolist(), got.signatures.tolist())) == want
    assert [(r.id, r.uri, r.signature) for r in got] == want and got[5].id == want[5][0] and len(got[2:9]) == 7
    h = hashlib.sha256()  # the formula stores were fingerprinted with: a store made before must not look changed
    for i, u, s in want:
        h.update(i.encode() + b"\0" + u.encode() + (b"\0" + s.encode() if s else b"") + b"\n")
    assert got.fingerprint() == h.hexdigest()
    dropped = len(rows) - len(want)
    assert "appears twice" in caplog.text and f"{dropped - listing_module.SHOWN} more repeated id(s)" in caplog.text


def test_sorted_matches_agree_with_sets_for_long_ids():
    """Matching a listing against the store's ids; numpy's searchsorted gets values over 15 bytes wrong."""
    rng = np.random.default_rng(2)
    pool = sorted(set(_random_ids(rng, 4000)))
    a = [pool[k] for k in sorted(rng.choice(len(pool), 2500, replace=False))]
    b = [pool[k] for k in sorted(rng.choice(len(pool), 2500, replace=False))]
    ia, ib = sorted_matches(str_column(a), str_column(b))
    assert [a[k] for k in ia] == [b[k] for k in ib]
    assert sorted(a[k] for k in ia) == sorted(set(a) & set(b))
    none = sorted_matches(str_column([]), str_column(b))
    assert len(none[0]) == len(none[1]) == 0


def _manifest(path, n: int):
    with open(path, "w") as f:
        for k in range(n):
            f.write(json.dumps({"id": f"cam{k % 7}/frame-{k:08d}.jpg", "uri": f"shots/cam{k % 7}/{k}.jpg"}) + "\n")
    return path


def test_a_manifest_listing_holds_columns_not_an_object_per_image(tmp_path, monkeypatch):
    """Bytes traced, never seconds. Beyond the text itself, one SampleRef per image held ~147 bytes a row here;
    the columns hold ~66 (16 a cell plus numpy's length prefix). The peak is the table plus one column being
    joined or sorted; rows become Python objects a block at a time only."""
    monkeypatch.setattr(ids_module, "ROWS_AT_ONCE", 1024)  # blocks much smaller than the listing, as at 20.7 M rows
    n = 40_000
    path = _manifest(tmp_path / "m.jsonl", n)
    list_source(str(path))  # imports and caches warmed outside the measurement
    tracemalloc.start()
    try:
        got = list_source(str(path))
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(got) == n and got.ids.dtype == str_column([]).dtype
    text = sum(len(i.encode()) + len(u.encode()) for i, u in zip(got.ids.tolist(), got.uris.tolist()))
    widest = max(len(u.encode()) for u in got.uris.tolist())
    assert (held - text) / n < 80, f"{(held - text) / n:.0f} bytes held per listed image beyond its text"
    assert peak - held < n * (24 + widest) + 2 * 1024 * 400, "more than one column and a block beside the table"


def test_a_local_folder_is_walked_a_folder_at_a_time(tmp_path, monkeypatch):
    """`find` would hold every file's details at once; the listing walks the tree folder by folder."""
    for rel in ("b.png", "a/c.jpg", "a/d/e.JPG", "z/f.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "odd.png").mkdir()  # a folder named like an image is listed, so the cache reports it

    def no_find(*args, **kwargs):
        raise AssertionError("a local folder was listed whole with find()")

    monkeypatch.setattr(LocalFileSystem, "find", no_find)
    got = list_source(str(tmp_path))
    assert got.ids.tolist() == ["a/c.jpg", "a/d/e.JPG", "b.png", "odd.png"]
    assert all(s.startswith("stat:") for s in got.signatures.tolist())
    assert got[0].uri == str(tmp_path / "a" / "c.jpg")


@pytest.mark.parametrize("views", [1, 3])
def test_a_plan_is_columns_with_one_row_per_view(tmp_path, views):
    from conftest import tiny_cache_config
    from distillkit.features.pipeline import plan_samples
    from distillkit.sources.images import split_of
    from distillkit.sources.views import view_seed

    path = _manifest(tmp_path / "m.jsonl", 50)
    cfg = tiny_cache_config(path, tmp_path / "s.zarr", views=views, val_fraction=0.3)
    plan = plan_samples(cfg)
    images = list_source(str(path))
    assert len(plan.refs) == len(plan.splits) == len(plan.seeds) == 50 * views
    for k in (0, 17, 50 * views - 1):
        image, v = images[k // views], k % views
        assert plan.refs[k].id == (image.id if views == 1 else f"{image.id}#{v}")
        assert plan.refs[k].uri == image.uri
        assert plan.splits[k] == split_of(image.id, 0.3)
        assert plan.seeds[k] == view_seed(cfg.view_seed, image.id, v)
    assert plan.fingerprint == plan.refs.fingerprint()


def test_an_s3_prefix_is_read_a_page_at_a_time_and_lists_what_find_does(s3_bucket, monkeypatch):
    """Against a real S3 API (moto): 250 objects come a page at a time (100 here) through s3fs's pager, never
    through find(), which holds every object's details at once; ids, uris and ETags equal find()'s listing."""
    import s3fs

    from distillkit.sources import images

    monkeypatch.setattr(images, "PAGE", 100)
    fs = s3fs.S3FileSystem()
    keys = [f"src/cam{k % 3}/{k:05d}.jpg" for k in range(250)] + ["src/odd.png/inner.txt", "src/notes.txt",
                                                                     "src/cam1/.hidden.png", "elsewhere/x.jpg"]
    fs.pipe({f"{s3_bucket}/{k}": k.encode() for k in keys})
    source = f"s3://{s3_bucket}/src"
    flat = list_source(source)  # the pager: find() is not called (below)
    calls = []
    real_find = s3fs.S3FileSystem.find
    monkeypatch.setattr(s3fs.S3FileSystem, "find", lambda self, *a, **k: calls.append(a) or real_find(self, *a, **k))
    paged = list_source(source)
    assert calls == []
    monkeypatch.setattr(images, "_object_pages", lambda fs, root: None)  # the whole-listing path, for comparison
    whole = list_source(source)
    assert calls, "the comparison listing did not use find()"
    for column in ("ids", "uris", "signatures"):
        assert getattr(paged, column).tolist() == getattr(whole, column).tolist() == getattr(flat, column).tolist()
    assert len(paged) == 252 and "odd.png" in paged.ids.tolist() and "elsewhere/x.jpg" not in paged.ids.tolist()
    assert paged[0].uri.startswith(f"s3://{s3_bucket}/src/") and paged[0].signature.startswith("etag:")
    assert paged.fingerprint() == whole.fingerprint()


@pytest.mark.parametrize("pattern", ["*.png", "**/*.png", "*/*.jpg", "s?b/**", "sub/*/*.JPEG", "[ab]*", "**"])
def test_a_glob_streams_the_matches_of_fsspecs_glob(tmp_path, monkeypatch, pattern):
    """The pattern's matches come from a walk filtered by fsspec's own translation of it, never from fs.glob
    (which lists everything first): the same images as fs.glob finds."""
    from distillkit.sources.images import IMAGE_EXTENSIONS

    for rel in ("a.png", "b.jpg", "sub/c.png", "sub/d.jpg", "sub/deeper/e.JPEG", "sab/f.png", "x/y/z/g.png",
                "notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "sub" / "odd.png").mkdir()
    fs = LocalFileSystem()
    want = sorted(p for p in fs.glob(str(tmp_path / pattern)) if p.lower().endswith(IMAGE_EXTENSIONS))
    monkeypatch.setattr(LocalFileSystem, "glob", lambda *a, **k: pytest.fail("fs.glob() was called"))
    assert want, "a pattern matching nothing proves nothing"
    assert sorted(list_source(str(tmp_path / pattern)).uris.tolist()) == want
