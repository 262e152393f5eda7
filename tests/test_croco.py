"""DUSt3R / MASt3R re-implementation vs the reference fixtures of the official code (shared/fixtures/dust3r)."""

from __future__ import annotations

import argparse
import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from distillkit.teachers import multihmr
from distillkit.teachers.croco import (
    RELEASED, AsymmetricCroCo3DStereo, config_from_kwargs, load_images, load_model, parse_constructor, save_hf,
)
from distillkit.teachers.croco.checkpoint import alias_groups, load_state_dict_strict

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "dust3r"
TINY = ("tiny_linear", "tiny_dpt", "tiny_mast3r")
RELEASE_KEYS = {
    "keys_ViTLarge_BaseDecoder_512_dpt": "DUSt3R_ViTLarge_BaseDecoder_512_dpt",
    "keys_ViTLarge_BaseDecoder_512_linear": "DUSt3R_ViTLarge_BaseDecoder_512_linear",
    "keys_ViTLarge_BaseDecoder_224_linear": "DUSt3R_ViTLarge_BaseDecoder_224_linear",
    "keys_MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric": "MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric",
}


def fixture(name: str) -> Path:
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"reference fixture {path} is absent (expected ../shared/fixtures/dust3r next to the repo)")
    return path


def overrides(name: str) -> dict:
    cfg = json.loads(fixture(f"{name}_config.json").read_text())
    return cfg.get("dpt_head_override") or cfg.get("head_override") or {}


_MODELS: dict[str, AsymmetricCroCo3DStereo] = {}


def tiny(name: str) -> AsymmetricCroCo3DStereo:
    """The fixture checkpoint through our loader (cached: several tests use the same model)."""
    if name not in _MODELS:
        _MODELS[name] = load_model(str(fixture(f"{name}.pth")), head_overrides=overrides(name))
    return _MODELS[name]


def io_npz(name: str) -> dict[str, np.ndarray]:
    with np.load(fixture(f"{name}_io.npz")) as z:
        return {k: z[k] for k in z.files}


def run_pairs(model: AsymmetricCroCo3DStereo, img: torch.Tensor) -> dict[str, torch.Tensor]:
    """Fixture pairs [[0, 1], [1, 0]]: every output and intermediate, keyed as in the npz."""
    with torch.no_grad():
        feat, pos = model.encode(img, torch.tensor([list(img.shape[-2:])] * len(img)))
        order = torch.tensor([1, 0])
        hw = tuple(img.shape[-2:])
        toks1, toks2 = model.decode(feat, pos, feat[order], pos[order])
        raw1, raw2 = model.head(1, toks1, hw), model.head(2, toks2, hw)
        pred1, pred2 = model.forward_pairs(img, torch.tensor([[0, 1], [1, 0]]))
        direct = model(img, img[order])
    for got, want in zip((pred1, pred2), direct):  # pair API == plain forward (same numbers, half the encoding)
        assert got.keys() == want.keys()
        for k in got:
            torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=1e-6)
    out = {"enc_feat": feat, "enc_pos": pos, "dec1_blocks": torch.stack(toks1[1:]),
           "dec2_blocks": torch.stack(toks2[1:]), "head1_raw": raw1, "head2_raw": raw2}
    out.update({f"view1_{k}": v for k, v in pred1.items()})
    out.update({f"view2_{k}": v for k, v in pred2.items()})
    return out


# ------------------------------------------------------------------------------------------------ parity
@pytest.mark.parametrize("name", TINY)
def test_parity_float32(name):
    ref = io_npz(name)
    got = run_pairs(tiny(name), torch.from_numpy(ref["img"]))
    inputs = ("img", "img_uint8", "true_shape", "pairs")
    expected_keys = {k for k in ref if k not in inputs and not k.startswith("fp64_")}
    assert set(got) == expected_keys
    assert torch.equal(got["enc_pos"], torch.from_numpy(ref["enc_pos"]))
    for key in sorted(expected_keys - {"enc_pos"}):
        assert got[key].dtype == torch.float32, key
        torch.testing.assert_close(got[key], torch.from_numpy(ref[key]), rtol=1e-4, atol=1e-4,
                                   msg=lambda m: f"{key}: {m}")


@pytest.mark.parametrize("name", TINY)
def test_parity_float64(name):
    ref = io_npz(name)
    model = copy.deepcopy(tiny(name)).double()
    img = torch.from_numpy(ref["img"]).double()
    with torch.no_grad():
        pred1, pred2 = model(img, img[[1, 0]])
    got = {**{f"fp64_view1_{k}": v for k, v in pred1.items()}, **{f"fp64_view2_{k}": v for k, v in pred2.items()}}
    assert set(got) == {k for k in ref if k.startswith("fp64_")}
    for key, value in got.items():
        assert value.dtype == torch.float64
        torch.testing.assert_close(value, torch.from_numpy(ref[key]), rtol=0, atol=1e-6, msg=lambda m: f"{key}: {m}")


def test_outputs_activations():
    out = run_pairs(tiny("tiny_mast3r"), torch.from_numpy(io_npz("tiny_mast3r")["img"]))
    assert (out["view1_conf"] > 1).all() and (out["view2_desc_conf"] > 0).all()
    torch.testing.assert_close(out["view1_desc"].norm(dim=-1), torch.ones(2, 48, 64))


# ------------------------------------------------------------------------------------------------ shapes, API
@pytest.mark.parametrize("name", TINY)
def test_non_square_inputs(name):
    """Odd token grids (3x5, 5x3) exercise the DPT crop; portrait runs natively (no transposition)."""
    model = tiny(name)
    gen = torch.Generator().manual_seed(0)
    land, port = torch.rand(2, 3, 48, 80, generator=gen) * 2 - 1, torch.rand(2, 3, 80, 48, generator=gen) * 2 - 1
    extra = ["desc", "desc_conf"] if model.cfg.desc_dim else []
    with torch.no_grad():
        for a, b in ((land, land.flip(0)), (port, port.flip(0)), (land, port)):
            pred1, pred2 = model(a, b)
            (h1, w1), (h2, w2) = a.shape[-2:], b.shape[-2:]
            assert set(pred1) == {"pts3d", "conf", *extra} and set(pred2) == {"pts3d_in_other_view", "conf", *extra}
            assert pred1["pts3d"].shape == (2, h1, w1, 3) and pred1["conf"].shape == (2, h1, w1)
            assert pred2["pts3d_in_other_view"].shape == (2, h2, w2, 3) and pred2["conf"].shape == (2, h2, w2)
            if extra:
                assert pred1["desc"].shape == (2, h1, w1, model.cfg.desc_dim)
                assert pred2["desc_conf"].shape == (2, h2, w2)
            assert all(torch.isfinite(v).all() for v in (*pred1.values(), *pred2.values()))
        # cached encodings give the same pair prediction as forward (encoder once per image, many pairs)
        feat, pos = model.encode(land)
        p1, p2 = model.predict(feat[:1], pos[:1], (48, 80), feat[1:], pos[1:], (48, 80))
        q1, q2 = model(land[:1], land[1:])
    for got, want in ((p1, q1), (p2, q2)):
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-5)


def test_bad_input_sizes():
    model = tiny("tiny_linear")
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model.encode(torch.zeros(1, 3, 40, 64))
    with pytest.raises(ValueError, match="true_shape"):
        model.encode(torch.zeros(1, 3, 48, 64), torch.tensor([[64, 48]]))


def test_heads_stay_float32_under_autocast():
    ref = io_npz("tiny_dpt")
    img = torch.from_numpy(ref["img"])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        pred1, pred2 = tiny("tiny_dpt")(img, img[[1, 0]])
    assert pred1["pts3d"].dtype == torch.float32 and pred2["conf"].dtype == torch.float32
    assert (pred1["pts3d"] - torch.from_numpy(ref["view1_pts3d"])).abs().max() < 0.5  # bf16 trunk: loose


# ------------------------------------------------------------------------------------------------ release layouts
@pytest.mark.parametrize("keys_file", sorted(RELEASE_KEYS))
def test_release_state_dict_keys(keys_file):
    ref = json.loads(fixture(f"{keys_file}.json").read_text())
    with torch.device("meta"):
        model = AsymmetricCroCo3DStereo(RELEASED[RELEASE_KEYS[keys_file]])
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert ours == list(ref["keys"].items())  # names, shapes and order, aliases included
    assert sum(p.numel() for p in model.parameters()) == ref["n_params_unique"]
    assert sorted(tuple(k.rsplit(".", 1)[0] for k in g) for g in alias_groups(model)) == sorted(
        tuple(pair) for pair in ref["module_aliases"])
    arch, kwargs = parse_constructor(ref["args_model_string_as_in_training"])
    assert config_from_kwargs(kwargs, arch) == RELEASED[RELEASE_KEYS[keys_file]]


def test_parse_constructor():
    arch, kw = parse_constructor("AsymmetricMASt3R(depth_mode=('exp', -inf, inf), conf_mode=('exp', 1, inf), "
                                 "patch_embed_cls='ManyAR_PatchEmbed', img_size=(512, 512))")
    assert arch == "AsymmetricMASt3R" and kw["depth_mode"] == ("exp", -float("inf"), float("inf"))
    assert config_from_kwargs({**kw, "pos_embed": "RoPE100", "landscape_only": False}).img_size == (512, 512)
    for bad in ("__import__('os').system('true')", "AsymmetricCroCo3DStereo(x=open('f'))", "Other(a=1)",
                "AsymmetricCroCo3DStereo(1)", "AsymmetricCroCo3DStereo(**d)", "AsymmetricCroCo3DStereo(a="):
        with pytest.raises(ValueError, match="constructor string"):
            parse_constructor(bad)
    with pytest.raises(ValueError, match="pos_embed"):
        config_from_kwargs({})  # the official default is the unsupported 'cosine' embedding
    with pytest.raises(ValueError, match="unsupported constructor argument"):
        config_from_kwargs({"pos_embed": "RoPE100", "enc_dim": 3})
    with pytest.raises(ValueError, match="head override"):
        config_from_kwargs({"pos_embed": "RoPE100"}, head_overrides={"features": 3})


# ------------------------------------------------------------------------------------------------ checkpoints
def _save_pth(path: Path, state: dict, args=None) -> str:
    obj = {"model": state}
    if args is not None:
        obj["args"] = args
    torch.save(obj, path)
    return str(path)


def _tiny_ckpt(name: str = "tiny_dpt") -> tuple[dict, argparse.Namespace]:
    with torch.serialization.safe_globals([argparse.Namespace]):
        ck = torch.load(fixture(f"{name}.pth"), weights_only=True)
    return dict(ck["model"]), ck["args"]


class NotAllowed:  # a pickled object of this class must be refused, not instantiated
    pass


def test_malformed_checkpoints(tmp_path):
    sd, args = _tiny_ckpt()
    ov = overrides("tiny_dpt")
    key = "dec_blocks2.1.cross_attn.projk.weight"

    def fails(path, *patterns):
        with pytest.raises(ValueError) as err:
            load_model(str(path), head_overrides=ov)
        for p in patterns:
            assert p in str(err.value), (p, str(err.value))

    fails(_save_pth(tmp_path / "missing.pth", {k: v for k, v in sd.items() if k != key}, args), "missing", key)
    fails(_save_pth(tmp_path / "extra.pth", {**sd, "downstream_head1.extra.bias": torch.zeros(3)}, args),
          "unexpected", "downstream_head1.extra.bias")
    fails(_save_pth(tmp_path / "shape.pth", {**sd, key: torch.zeros(48, 47)}, args), "shape mismatch", key, "(48, 47)")
    rn0 = "downstream_head2.dpt.scratch.layer_rn.0.weight"
    fails(_save_pth(tmp_path / "alias.pth", {**sd, rn0: sd[rn0] + 1}, args), "aliased", rn0)
    fails(_save_pth(tmp_path / "noargs.pth", sd), "args.model")
    fails(_save_pth(tmp_path / "object.pth", sd, NotAllowed()), "not a readable torch checkpoint", "NotAllowed")
    torch.save(sd, tmp_path / "bare.pth")
    fails(tmp_path / "bare.pth", "not a DUSt3R/MASt3R checkpoint")
    data = fixture("tiny_dpt.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    fails(tmp_path / "truncated.pth", "not a readable torch checkpoint")
    (tmp_path / "notes.pth").write_text("not a checkpoint at all\n")
    fails(tmp_path / "notes.pth", "not a readable torch checkpoint")
    fails(tmp_path / "absent.pth", "not found")
    # the tiny DPT file read without its (non-released) head widths: the released-width model does not fit
    with pytest.raises(ValueError, match="shape mismatch"):
        load_model(str(fixture("tiny_dpt.pth")))


def test_one_alias_name_is_enough(tmp_path):
    sd, args = _tiny_ckpt()
    kept = {k: v.clone() for k, v in sd.items() if ".layer_rn." not in k}  # clones: no shared storage left
    model = load_model(_save_pth(tmp_path / "one_name.pth", kept, args), head_overrides=overrides("tiny_dpt"))
    assert torch.equal(model.downstream_head1.dpt.scratch.layer_rn[2].weight,
                       sd["downstream_head1.dpt.scratch.layer3_rn.weight"])
    with torch.device("meta"):
        meta = AsymmetricCroCo3DStereo(tiny("tiny_dpt").cfg)
    with pytest.raises(ValueError, match="missing key"):  # dropping both names is still an error
        load_state_dict_strict(meta, {k: v for k, v in kept.items() if "layer3_rn" not in k}, "x")


@pytest.mark.parametrize("name", ("tiny_dpt", "tiny_mast3r"))
def test_hf_safetensors_round_trip(tmp_path, name):
    from safetensors import safe_open

    model = tiny(name)
    save_hf(model, str(tmp_path / "hf"))
    cfg_text = (tmp_path / "hf" / "config.json").read_text()
    assert "-Infinity" in cfg_text and "Infinity" in cfg_text
    with safe_open(tmp_path / "hf" / "model.safetensors", "pt") as f:
        names = set(f.keys())
    assert not any(".layer_rn." in k for k in names) and "downstream_head1.dpt.scratch.layer4_rn.weight" in names
    assert len(names) == len(model.state_dict()) - 8  # one name per alias pair, 4 pairs per head

    img = torch.from_numpy(io_npz(name)["img"])
    with torch.no_grad():
        want = model(img, img[[1, 0]])
        for ref in (tmp_path / "hf", tmp_path / "hf" / "model.safetensors", f"file://{tmp_path / 'hf'}"):
            got = load_model(str(ref))(img, img[[1, 0]])
            for a, b in zip(got, want):
                assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # a remote (non-local fsspec) location goes through the byte readers
    save_hf(model, f"memory://croco-rt/{name}")
    with torch.no_grad():
        got = load_model(f"memory://croco-rt/{name}")(img, img[[1, 0]])
    assert all(torch.equal(got[0][k], want[0][k]) for k in want[0])

    data = (tmp_path / "hf" / "model.safetensors").read_bytes()
    (tmp_path / "hf" / "model.safetensors").write_bytes(data[: len(data) - 1000])
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        load_model(str(tmp_path / "hf"))
    (tmp_path / "hf" / "config.json").unlink()
    with pytest.raises(ValueError, match="config.json"):
        load_model(str(tmp_path / "hf"))


def test_pth_from_fsspec_url():
    import fsspec

    with fsspec.open("memory://croco-pth/tiny_linear.pth", "wb") as f:
        f.write(fixture("tiny_linear.pth").read_bytes())
    model = load_model("memory://croco-pth/tiny_linear.pth")
    assert model.cfg.head_type == "linear" and model.cfg.arch == "AsymmetricCroCo3DStereo"
    reference = tiny("tiny_linear").state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())


# ------------------------------------------------------------------------------------------------ image loader
def test_load_images_bit_exact(tmp_path):
    with np.load(fixture("preprocess_load_images.npz")) as z:
        ref = {k: z[k] for k in z.files}
    names = sorted(k.split("__", 1)[1] for k in ref if k.startswith("src_png__"))
    for n in names:
        (tmp_path / f"{n}.png").write_bytes(ref[f"src_png__{n}"].tobytes())
    (tmp_path / "notes.txt").write_text("skipped")
    modes = {"s512": (512, False), "s512_squareok": (512, True), "s224": (224, False)}
    checked = 0
    for mode, (size, square_ok) in modes.items():
        views = load_images(tmp_path, size, square_ok=square_ok)  # folder: sorted by name, .txt skipped
        assert [v["idx"] for v in views] == list(range(len(names))) and views[0]["instance"] == "0"
        for n, view in zip(names, views):
            key = f"out_png_{mode}__{n}"
            if key not in ref:
                continue
            want = np.asarray(Image.open(io.BytesIO(ref[key].tobytes())).convert("RGB"))
            want_t = ((torch.from_numpy(want).permute(2, 0, 1).float() / 255 - 0.5) / 0.5)[None]
            assert view["true_shape"].dtype == np.int32
            np.testing.assert_array_equal(view["true_shape"], ref[f"true_shape_{mode}__{n}"])
            assert view["img"].dtype == torch.float32 and torch.equal(view["img"], want_t), key
            checked += 1
    assert checked == 13
    one = load_images([tmp_path / "exif6_400x300.png"], 512)
    assert one[0]["img"].shape == (1, 3, 512, 384)  # EXIF orientation 6: portrait
    with pytest.raises(ValueError, match="no images"):
        load_images([tmp_path / "notes.txt"], 512)


# ------------------------------------------------------------------------------------------------ Multi-HMR encoder
@pytest.mark.parametrize("prefix", ("backbone.encoder.", "encoder.backbone."))
def test_multihmr_encoder_keys_match_timm(prefix):
    ref = json.loads(fixture("keys_MultiHMR_encoder_dinov2_vitl14.json").read_text())["keys"]
    ckpt = {"model_state_dict": {prefix + k.removeprefix("backbone.encoder."): torch.empty(s, device="meta")
                                 for k, s in ref.items()}}
    ckpt["model_state_dict"]["head.pose.weight"] = torch.empty(3, device="meta")  # the rest of Multi-HMR: ignored
    with torch.device("meta"):
        model = multihmr.create_encoder()
    converted = multihmr.to_timm(multihmr.encoder_state_dict(ckpt), model)
    want = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert {k: list(v.shape) for k, v in converted.items()} == want
    listed = {k.removeprefix("backbone.encoder."): s for k, s in ref.items() if not k.endswith("mask_token")}
    assert len(listed) == len(want) == 342 and set(listed) == set(want)  # official names == timm names here


def test_multihmr_encoder_load_tiny_depth():
    ref = json.loads(fixture("keys_MultiHMR_encoder_dinov2_vitl14.json").read_text())["keys"]
    gen = torch.Generator().manual_seed(0)
    keep = {k: s for k, s in ref.items() if ".blocks." not in k or k.split(".blocks.")[1].split(".")[0] in ("0", "1")}
    sd = {k: torch.randn(s, generator=gen) * 0.02 for k, s in keep.items()}
    model = multihmr.create_encoder(depth=2)
    multihmr.load_encoder(model, {"model_state_dict": sd})
    assert torch.equal(model.blocks[1].ls2.gamma, sd["backbone.encoder.blocks.1.ls2.gamma"])
    del sd["backbone.encoder.blocks.1.attn.proj.bias"]
    with pytest.raises(ValueError, match="blocks.1.attn.proj.bias"):
        multihmr.load_encoder(model, {"model_state_dict": sd})
    with pytest.raises(ValueError, match="no Multi-HMR encoder weights"):
        multihmr.encoder_state_dict({"model_state_dict": {"head.weight": torch.zeros(1)}})
