"""Decoding (EXIF, grayscale, alpha, 16-bit, palette, CMYK, bad inputs), source listing, views and configs."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from distillkit.config.cache import CacheConfig

from distillkit.training.dune.config import TrainConfig

from distillkit.config.common import load_config, parse_hw
from distillkit.sources import BadImage, list_source, load_rgb
from distillkit.sources.decode import decode_rgb
from distillkit.sources.views import center_view, render

RNG = np.random.default_rng(0)


def _png(img: Image.Image) -> bytes:
    b = io.BytesIO()
    img.save(b, "PNG")
    return b.getvalue()


def _jpeg(img: Image.Image, **kw) -> bytes:
    b = io.BytesIO()
    img.save(b, "JPEG", **kw)
    return b.getvalue()


def _write_image(path: Path, hw=(8, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 256, (*hw, 3), dtype=np.uint8)).save(path)
    return path


# --------------------------------------------------------------------------------------------------- decoding


def test_grayscale_png_becomes_three_equal_channels(tmp_path):
    gray = RNG.integers(0, 256, (9, 13), dtype=np.uint8)
    path = tmp_path / "g.png"
    Image.fromarray(gray, mode="L").save(path)
    rgb = load_rgb(str(path))
    assert rgb.shape == (9, 13, 3) and rgb.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], gray)


def test_opaque_rgba_equals_its_rgb():
    rgb = RNG.integers(0, 256, (7, 11, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((7, 11, 1), 255, np.uint8)], axis=2)
    out = decode_rgb(_png(Image.fromarray(rgba, mode="RGBA")))
    np.testing.assert_array_equal(out, rgb)


def test_transparent_rgba_becomes_white():
    rgba = RNG.integers(0, 256, (6, 5, 4), dtype=np.uint8)
    rgba[..., 3] = 0
    rgba[0, 0] = (10, 20, 30, 255)  # one opaque pixel keeps its colour
    out = decode_rgb(_png(Image.fromarray(rgba, mode="RGBA")))
    assert out.shape == (6, 5, 3)
    assert tuple(out[0, 0]) == (10, 20, 30)
    mask = np.ones((6, 5), bool)
    mask[0, 0] = False
    assert (out[mask] == 255).all()


def test_gray_alpha_and_transparent_palette_composite_over_white():
    la = np.stack([np.full((4, 6), 80, np.uint8), np.zeros((4, 6), np.uint8)], axis=2)
    la[0, 0, 1] = 255
    out = decode_rgb(_png(Image.fromarray(la, mode="LA")))
    assert tuple(out[0, 0]) == (80, 80, 80) and (out.reshape(-1, 3)[1:] == 255).all()

    pal = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), mode="P")
    pal.putpalette([200, 10, 10, 0, 0, 0] + [0] * (256 * 3 - 6))
    pal.info["transparency"] = 1  # palette index 1 is transparent
    out = decode_rgb(_png(pal))
    np.testing.assert_array_equal(out[0, 0], (200, 10, 10))
    np.testing.assert_array_equal(out[0, 1], (255, 255, 255))


def test_16bit_grayscale_png_scaled_to_8bit():
    v = np.array([[0, 1, 128, 129, 257], [1000, 30000, 32896, 65278, 65535]], dtype=np.uint16)
    img = Image.fromarray(v)
    assert img.mode == "I;16"
    data = _png(img)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # really stored as 16-bit
    out = decode_rgb(data)
    expected = np.round(v / 257.0).astype(np.uint8)
    assert out.shape == (2, 5, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], expected)


def test_palette_image_equals_its_rgb_conversion():
    rgb = Image.fromarray(RNG.integers(0, 256, (12, 9, 3), dtype=np.uint8))
    pal = rgb.quantize(colors=16)
    assert pal.mode == "P"
    out = decode_rgb(_png(pal))
    np.testing.assert_array_equal(out, np.asarray(pal.convert("RGB")))


def test_exif_orientation_6_rotates_clockwise():
    raw = np.zeros((32, 64, 3), np.uint8)
    raw[:8, :8] = 255  # bright top-left corner of the stored pixels
    img = Image.fromarray(raw)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    data = _jpeg(img, exif=exif, quality=95)
    out = decode_rgb(data)
    assert out.shape == (64, 32, 3)  # H and W swapped
    # same as PIL's own transpose and as a clockwise rotation of the raw pixels (within JPEG error)
    np.testing.assert_array_equal(out, np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")))
    assert np.abs(out.astype(int) - np.rot90(raw, k=-1).astype(int)).max() <= 40
    # the bright corner moved from top-left to top-right
    assert out[:8, -8:].mean() > 200 and out[:8, :8].mean() < 50 and out[-8:, -8:].mean() < 50


def test_cmyk_jpeg_decodes_to_rgb():
    cmyk = Image.fromarray(np.full((10, 12, 3), (200, 100, 50), np.uint8)).convert("CMYK")
    data = _jpeg(cmyk)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = decode_rgb(data)
    assert out.shape == (10, 12, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)).max() <= 1


@pytest.mark.parametrize("kind, reason", [
    ("empty", "empty"), ("truncated", "truncated"), ("text", "not an image"), ("missing", "not found")])
def test_bad_inputs_raise_badimage_with_reason(tmp_path, kind, reason):
    path = tmp_path / "x.jpg"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        full = _jpeg(Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)), quality=95)
        path.write_bytes(full[: len(full) // 2])
    elif kind == "text":
        path.write_text("this is not a picture, just some text\n" * 5)
    with pytest.raises(BadImage) as e:
        load_rgb(str(path))
    assert reason in str(e.value)


# --------------------------------------------------------------------------------------------------- listing


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "imgs"
    for rel in ("b.png", "a.jpg", "sub/c.png", "sub/deeper/d.JPEG"):
        _write_image(root / rel)
    (root / "notes.txt").write_text("not an image")
    (root / "sub" / "meta.json").write_text("{}")
    return root


def test_list_folder_recursive_sorted_relative_ids(tree):
    refs = list_source(str(tree))
    assert [r.id for r in refs] == ["a.jpg", "b.png", "sub/c.png", "sub/deeper/d.JPEG"]
    for r in refs:
        assert Path(r.uri) == tree / r.id
        assert Path(r.uri).is_file()


def test_list_folder_trailing_slash_same_ids(tree):
    assert [r.id for r in list_source(str(tree) + "/")] == [r.id for r in list_source(str(tree))]


def test_list_glob(tree):
    refs = list_source(str(tree / "*.png"))
    assert [r.id for r in refs] == ["b.png"]
    refs = list_source(str(tree / "**" / "*.png"))
    assert sorted(r.id for r in refs) == [r.id for r in refs]
    assert {r.id for r in refs} == {"b.png", "sub/c.png"}
    assert all(Path(r.uri).is_file() for r in refs)


def test_list_txt_manifest_relative_to_manifest_folder(tree, tmp_path):
    man = tree / "list.txt"
    man.write_text(f"# a comment\nsub/c.png\n\n  # indented comment\nb.png\n{tree / 'a.jpg'}\n")
    refs = list_source(str(man))
    by_id = {r.id: r.uri for r in refs}
    assert len(refs) == 3
    assert Path(by_id["sub/c.png"]) == tree / "sub" / "c.png"
    assert Path(by_id["b.png"]) == tree / "b.png"
    assert Path(by_id[str(tree / "a.jpg")]) == tree / "a.jpg"
    assert [r.id for r in refs] == sorted(by_id)
    assert all(Path(u).is_file() for u in by_id.values())


def test_list_csv_manifest(tree):
    man = tree / "list.csv"
    man.write_text("id,uri\nsecond,b.png\nfirst,sub/c.png\n")
    refs = list_source(str(man))
    assert [(r.id, Path(r.uri)) for r in refs] == [("first", tree / "sub" / "c.png"), ("second", tree / "b.png")]


def test_list_jsonl_manifest(tree):
    man = tree / "list.jsonl"
    man.write_text(json.dumps({"id": "z", "uri": "a.jpg"}) + "\n\n" + json.dumps({"uri": "sub/c.png"}) + "\n")
    refs = list_source(str(man))
    assert [(r.id, Path(r.uri)) for r in refs] == [("sub/c.png", tree / "sub" / "c.png"), ("z", tree / "a.jpg")]


def test_duplicate_ids_in_manifest_keep_the_first_row_and_warn(tree, caplog):
    man = tree / "dup.csv"
    man.write_text("id,uri\nsame,a.jpg\nother,b.png\nsame,sub/c.png\n")
    with caplog.at_level(logging.WARNING, logger="distillkit"):
        refs = list_source(str(man))
    assert [(r.id, Path(r.uri).name) for r in refs] == [("other", "b.png"), ("same", "a.jpg")]
    assert "sample id 'same' appears twice" in caplog.text and "sub/c.png" in caplog.text
    man = tree / "dup.txt"
    man.write_text("a.jpg\nb.png\na.jpg\n")
    assert [r.id for r in list_source(str(man))] == ["a.jpg", "b.png"]


def test_names_with_newlines_and_line_separators_survive_csv_and_jsonl(tree):
    odd = ["two\nlines.png", "sep\u2028arated.png", "nel\x85.png"]
    for name in odd:
        _write_image(tree / name)
    man = tree / "odd.csv"
    with open(man, "w", newline="") as f:
        csv.writer(f).writerows([("id", "uri"), *[(n, n) for n in odd]])
    jl = tree / "odd.jsonl"
    jl.write_text("".join(json.dumps({"uri": n}, ensure_ascii=False) + "\n" for n in odd), encoding="utf-8")
    for m in (man, jl):
        refs = list_source(str(m))
        assert sorted(r.id for r in refs) == sorted(odd) and all(Path(r.uri).is_file() for r in refs), m


def test_folder_lists_a_directory_named_like_an_image_so_it_is_reported(tree):
    (tree / "folder.png").mkdir()
    refs = {r.id: r.uri for r in list_source(str(tree))}
    assert "folder.png" in refs
    with pytest.raises(BadImage, match="is a directory"):
        load_rgb(refs["folder.png"])


def test_empty_folder_rejected(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("no images here")
    with pytest.raises(ValueError, match="no images"):
        list_source(str(tmp_path / "empty"))


def test_missing_source_rejected(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        list_source(str(tmp_path / "nope"))


def test_bad_jsonl_line_names_line_number(tree):
    man = tree / "bad.jsonl"
    man.write_text(json.dumps({"uri": "a.jpg"}) + "\n" + json.dumps({"uri": "b.png"}) + "\n{not json\n")
    with pytest.raises(ValueError, match="line 3"):
        list_source(str(man))
    man.write_text(json.dumps({"uri": "a.jpg"}) + "\n" + json.dumps({"id": "no-uri"}) + "\n")
    with pytest.raises(ValueError, match="line 2"):
        list_source(str(man))


# --------------------------------------------------------------------------------------------------- views


@pytest.mark.parametrize("source_hw", [(400, 300), (300, 400), (256, 256), (100, 700)])
@pytest.mark.parametrize("target_hw", [(224, 224), (224, 336), (112, 56)])
def test_center_view_box(source_hw, target_hw):
    sh, sw = source_hw
    th, tw = target_hw
    v = center_view(source_hw, target_hw)
    assert 0 <= v.x0 < v.x1 <= sw and 0 <= v.y0 < v.y1 <= sh
    w, h = v.x1 - v.x0, v.y1 - v.y0
    assert w / h == pytest.approx(tw / th, rel=1e-6)
    # centred
    assert (v.x0 + v.x1) / 2 == pytest.approx(sw / 2) and (v.y0 + v.y1) / 2 == pytest.approx(sh / 2)
    # largest such box: it touches both sides along one axis
    assert w == pytest.approx(sw) or h == pytest.approx(sh)
    assert not v.flip
    img = RNG.integers(0, 256, (sh, sw, 3), dtype=np.uint8)
    out = render(img, v, target_hw)
    assert out.shape == (th, tw, 3) and out.dtype == np.uint8


def test_render_identity_and_flip():
    img = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    v = center_view((20, 30), (20, 30))
    np.testing.assert_array_equal(render(img, v, (20, 30)), img)
    from dataclasses import replace
    np.testing.assert_array_equal(render(img, replace(v, flip=True), (20, 30)), img[:, ::-1])


# --------------------------------------------------------------------------------------------------- config


def test_parse_hw():
    assert parse_hw("224x336") == (224, 336)
    assert parse_hw(224) == (224, 224)
    assert parse_hw("224") == (224, 224)
    assert parse_hw([112, 56]) == (112, 56)
    with pytest.raises(ValueError, match="HxW"):
        parse_hw("big")


def test_cache_config_image_size_must_divide_by_student_patch():
    ok = CacheConfig(source="x", store="y", teachers=["dinov2_vits14"], image_size="224x336", student_patch=14)
    assert ok.image_size == (224, 336) and ok.teachers[0].name == "dinov2_vits14"
    with pytest.raises(ValueError) as e:
        CacheConfig(source="x", store="y", teachers=["dinov2_vits14"], image_size=230, student_patch=14)
    assert "230" in str(e.value) and "14" in str(e.value) and "student_patch" in str(e.value)


def test_load_config_unknown_field_names_file_and_field(tmp_path):
    path = tmp_path / "cache.yaml"
    path.write_text("source: imgs\nstore: out.zarr\nteachers: [dinov2_vits14]\nbatch_sise: 8\n")
    with pytest.raises(ValueError) as e:
        load_config(CacheConfig, path)
    assert str(path) in str(e.value) and "batch_sise" in str(e.value)
    cfg = load_config(CacheConfig, None, source="a", store="b",
                      teachers=["dinov2_vits14"], batch_size=8)
    assert cfg.batch_size == 8


def test_load_config_overrides_and_nested_errors(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("stores: s.zarr\nout_dir: out\nstudent: {preset: vit_tiny, colour: red}\n")
    with pytest.raises(ValueError) as e:
        load_config(TrainConfig, path)
    assert str(path) in str(e.value) and "student.colour" in str(e.value)
    path.write_text("stores: s.zarr\nout_dir: out\nbatch_size: 4\n")
    cfg = load_config(TrainConfig, path, batch_size=16, lr=None)
    assert cfg.stores == ["s.zarr"] and cfg.batch_size == 16
