"""The 3-D-aware DUNE teachers: MASt3R encoder and Multi-HMR encoder, alone and cached with DINOv2 in one store."""

from __future__ import annotations

import argparse
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from conftest import REPO, TINY_TEACHER, tiny_cache_config
from distillkit.cache import decode_sample, run_cache
from distillkit_schemas.validate import read_provenance
from distillkit.config.cache import CacheConfig, TeacherConfig
from distillkit.config.common import load_config
from distillkit.store import StoreMismatch
from distillkit.stores import validate_store
from distillkit.teachers import multihmr, registry
from distillkit.teachers.croco import AsymmetricCroCo3DStereo, CroCoConfig, save_hf
from distillkit.teachers.croco.checkpoint import config_to_kwargs
from distillkit.images import IMAGENET_MEAN, IMAGENET_STD
from distillkit.teachers.registry import load_teacher, teacher_input_hw

FIXTURES = Path(__file__).resolve().parents[2] / "shared/fixtures/dust3r"
MAST3R, MHMR, DINO = "mast3r_vitl16_enc", "multihmr_vitl14_enc", TINY_TEACHER["name"]
TINY = {"embed_dim": 64, "depth": 2, "num_heads": 2}
THREE = [TINY_TEACHER, {"name": MAST3R, "overrides": TINY}, {"name": MHMR, "overrides": TINY}]


@pytest.fixture(autouse=True)
def _fresh_registry():
    registry._LOADED.clear()
    yield
    registry._LOADED.clear()


def fixture(name: str) -> Path:
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"reference fixture {path} is absent (expected ../shared/fixtures/dust3r next to the repo)")
    return path


def images(hw: tuple[int, int], n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, *hw, 3), dtype=np.uint8))


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 [B,H,W,3] -> [B,3,H,W] in [-1, 1], as DUSt3R's load_images does."""
    return (x.permute(0, 3, 1, 2).float().div(255) - 0.5) / 0.5


def tiny_mast3r_network(seed: int = 0) -> AsymmetricCroCo3DStereo:
    cfg = CroCoConfig(head_type="catmlp+dpt", enc_embed_dim=64, enc_depth=2, enc_num_heads=2, dec_embed_dim=32,
                      dec_depth=4, dec_num_heads=1, desc_dim=8, two_confs=True, desc_conf_mode=("exp", 0.0, np.inf),
                      dpt_feature_dim=24, dpt_last_dim=12, dpt_layer_dims=(8, 16, 24, 32), local_mlp_hidden_factor=1.0,
                      arch="AsymmetricMASt3R")
    torch.manual_seed(seed)
    model = AsymmetricCroCo3DStereo(cfg).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a missed parameter shows
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def save_pth(model: AsymmetricCroCo3DStereo, path: Path, extra: dict | None = None, drop: str | None = None) -> Path:
    """The released .pth layout: {'model': state_dict, 'args': Namespace(model='AsymmetricMASt3R(...)')}."""
    call = f"{model.cfg.arch}(" + ", ".join(f"{k}={v!r}" for k, v in config_to_kwargs(model.cfg).items()) + ")"
    sd = {k: v for k, v in model.state_dict().items() if k != drop}
    torch.save({"model": {**sd, **(extra or {})}, "args": argparse.Namespace(model=call)}, path)
    return path


# ------------------------------------------------------------------------------------------------ grids
def test_input_sizes_on_student_and_own_grids():
    assert teacher_input_hw(MAST3R, (56, 56), 14) == (64, 64)  # 4x4 tokens like the student
    assert teacher_input_hw(MHMR, (56, 56), 14) == (56, 56)
    assert teacher_input_hw(MAST3R, (70, 42), 14) == (80, 48)  # 5x3
    assert teacher_input_hw(MAST3R, (70, 42), 14, grid="own") == (64, 48)  # 4.375 -> 4, 2.625 -> 3 patches
    assert teacher_input_hw(MAST3R, (56, 56), 14, grid="own") == (64, 64)  # half up
    assert teacher_input_hw(MAST3R, (224, 224), 14, grid="own") == (224, 224)  # 14x14, student grid: 16x16
    assert teacher_input_hw(MHMR, (112, 112), 16, grid="own") == (112, 112)
    assert teacher_input_hw(MAST3R, (8, 8), 14, grid="own") == (16, 16)  # at least one patch
    with pytest.raises(ValueError, match="grid"):
        teacher_input_hw(MAST3R, (56, 56), 14, grid="native")
    assert {MAST3R, MHMR} <= set(registry.teacher_names())


def test_multi_teacher_store_one_pass(photos, tmp_path):
    store = tmp_path / "multi.zarr"
    cfg = tiny_cache_config(photos, store, teachers=THREE)
    result = run_cache(cfg, show_progress=False)
    assert result["finalize"]["n_valid"] == 12
    assert validate_store(str(store)) == []
    g = zarr.open_group(str(store), mode="r")
    provs = {t: read_provenance(g, t).model_dump(mode="json") for t in (DINO, MAST3R, MHMR)}
    assert {t: tuple(p["grid_hw"]) for t, p in provs.items()} == {DINO: (4, 4), MAST3R: (4, 4), MHMR: (4, 4)}
    assert tuple(provs[MAST3R]["input_hw"]) == (64, 64) and tuple(provs[MHMR]["input_hw"]) == (56, 56)
    assert tuple(provs[MAST3R]["mean"]) == (0.5,) * 3 and tuple(provs[MHMR]["mean"]) == IMAGENET_MEAN
    for t in (DINO, MAST3R, MHMR):
        assert g[f"teachers/{t}/patch"].shape == (12, 4, 4, 64 if t != DINO else 384)
        assert provs[t]["checkpoint_sha256"] == "random-init:0"
    has_cls = {t: read_provenance(g, t).has_cls for t in provs}
    assert has_cls == {DINO: True, MAST3R: False, MHMR: False}
    # the cls array of the patch-only teachers is the patch mean; the features are the teachers' own forward
    uris = g["samples/uri"][:].tolist()
    d = decode_sample(uris[5], (56, 56), {(56, 56), (64, 64)}, {})
    for t, hw in ((MAST3R, (64, 64)), (MHMR, (56, 56))):
        patch = g[f"teachers/{t}/patch"][5].astype(np.float32)
        np.testing.assert_allclose(g[f"teachers/{t}/cls"][5].astype(np.float32), patch.mean((0, 1)), atol=2e-3)
        teacher = load_teacher(TeacherConfig(name=t, overrides=TINY), (56, 56), 14)
        ref = teacher(torch.from_numpy(d.teacher_inputs[hw][None])).patch[0].numpy()
        np.testing.assert_allclose(patch, ref, atol=2e-2, rtol=1e-2)
    np.testing.assert_array_equal(g["samples/image"][5], d.image)

    # same config again: nothing to do; another teacher setup: refused, store untouched
    before = {t: g[f"teachers/{t}/patch"][:] for t in (MAST3R, MHMR)}
    assert run_cache(cfg, show_progress=False)["nothing_to_do"]
    other = {"name": MAST3R, "overrides": TINY, "seed": 3}
    with pytest.raises(StoreMismatch, match="checkpoint_sha256"):
        run_cache(tiny_cache_config(photos, store, teachers=[THREE[0], other, THREE[2]]), show_progress=False)
    deeper = {"name": MHMR, "overrides": {**TINY, "depth": 3}}
    with pytest.raises(StoreMismatch, match="arch_overrides"):
        run_cache(tiny_cache_config(photos, store, teachers=[*THREE[:2], deeper]), show_progress=False)
    # own grid at 56 px = the same inputs (64, 56, 56): same features, accepted
    own = [dict(t, grid="own") for t in THREE]
    assert run_cache(tiny_cache_config(photos, store, teachers=own), show_progress=False)["nothing_to_do"]
    for t in (MAST3R, MHMR):
        np.testing.assert_array_equal(before[t], g[f"teachers/{t}/patch"][:])


def test_own_grid_caching(photos, tmp_path):
    src = tmp_path / "four"
    src.mkdir()
    for p in sorted(photos.iterdir())[:4]:
        shutil.copy(p, src / p.name)
    store = tmp_path / "own.zarr"
    teachers = [dict(t, grid="own") for t in THREE]
    run_cache(tiny_cache_config(src, store, teachers=teachers, image_size=112, student_patch=16),
              show_progress=False)
    assert validate_store(str(store)) == []
    g = zarr.open_group(str(store), mode="r")
    # student 112 px with patch 16 -> 7x7 student grid; each teacher on its own grid at ~the student's pixels
    want = {DINO: ((112, 112), (8, 8)), MAST3R: ((112, 112), (7, 7)), MHMR: ((112, 112), (8, 8))}
    for t, (hw, grid) in want.items():
        prov = read_provenance(g, t)
        assert (prov.input_hw, prov.grid_hw) == (hw, grid)
        assert g[f"teachers/{t}/patch"].shape[1:3] == grid
    # on the student grid instead, MASt3R sees 7 x 16 = 112 px too, but DINOv2 7 x 14 = 98 px: refused
    with pytest.raises(StoreMismatch, match=r"dinov2_vits14_reg\.input_hw: store has \[112, 112\], this run has "
                       r"\[98, 98\]"):
        run_cache(tiny_cache_config(src, store, teachers=THREE, image_size=112, student_patch=16),
                  show_progress=False)


# ------------------------------------------------------------------------------------------------ MASt3R
def test_mast3r_normalisation_is_dunes_renormalisation():
    """DUNE: student tensor (ImageNet stats) -> x*std+mean -> (x-0.5)/0.5. Ours: pixels/255 -> (x-0.5)/0.5."""
    teacher = load_teacher(TeacherConfig(name=MAST3R, overrides=TINY), (56, 56), 14, device="cpu")
    x = images((64, 64))
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    student = (x.permute(0, 3, 1, 2).float() / 255 - mean) / std
    dune = (student * std + mean - 0.5) / 0.5
    torch.testing.assert_close(teacher.normalize(x), dune, atol=1e-6, rtol=0)
    torch.testing.assert_close(teacher.normalize(x), to_unit(x), atol=0, rtol=0)


@pytest.mark.parametrize("layout", ["pth", "hf"])
def test_mast3r_teacher_equals_croco_encoder(tmp_path, layout):
    model = tiny_mast3r_network()
    if layout == "pth":
        ref = str(save_pth(model, tmp_path / "tiny.pth"))
    else:
        save_hf(model, str(tmp_path / "hf"))
        ref = str(tmp_path / "hf")
    teacher = load_teacher(TeacherConfig(name=MAST3R, checkpoint=ref), (42, 70), 14, device="cpu")
    assert teacher.input_hw == (48, 80) and teacher.provenance.grid_hw == (3, 5)
    assert teacher.provenance.arch_overrides == TINY
    assert not any(k.startswith(("dec", "downstream", "mask")) for k in teacher.module.state_dict())
    x = images((48, 80), n=3)
    with torch.no_grad():
        feats, _ = model.encode(to_unit(x))
    out = teacher(x)
    assert out.cls is None
    torch.testing.assert_close(out.patch, feats.reshape(3, 3, 5, 64), atol=1e-5, rtol=1e-5)
    digest = hashlib.sha256()
    for f in ([tmp_path / "tiny.pth"] if layout == "pth" else [tmp_path / "hf/config.json",
                                                               tmp_path / "hf/model.safetensors"]):
        digest.update(f.read_bytes())
    assert teacher.provenance.checkpoint_sha256 == digest.hexdigest()


def test_mast3r_teacher_reproduces_the_official_fixture():
    path = fixture("tiny_mast3r.pth")
    with np.load(fixture("tiny_mast3r_io.npz")) as z:
        img, enc_feat = z["img_uint8"], z["enc_feat"]  # (2, 48, 64, 3), (2, 12, 64) after enc_norm
        np.testing.assert_allclose(to_unit(torch.from_numpy(img)).numpy(), z["img"], atol=1e-6)
    teacher = load_teacher(TeacherConfig(name=MAST3R, checkpoint=str(path)), (48, 64), 16, device="cpu")
    assert teacher.input_hw == (48, 64) and teacher.provenance.embed_dim == 64
    assert teacher.provenance.checkpoint_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    out = teacher(torch.from_numpy(img))
    np.testing.assert_allclose(out.patch.numpy(), enc_feat.reshape(2, 3, 4, 64), rtol=1e-4, atol=1e-4)
    # the same weights are reused (loaded once per process)
    assert load_teacher(TeacherConfig(name=MAST3R, checkpoint=str(path)), (48, 64), 16, device="cpu") is teacher


def test_mast3r_checkpoint_errors(tmp_path):
    model = tiny_mast3r_network()

    def load(ref, overrides=None):
        registry._LOADED.clear()
        return load_teacher(TeacherConfig(name=MAST3R, checkpoint=str(ref), overrides=overrides or {}), (56, 56), 14,
                            device="cpu")

    with pytest.raises(ValueError, match=r"1 missing encoder key\(s\): enc_blocks\.1\.mlp\.fc2\.weight"):
        load(save_pth(model, tmp_path / "missing.pth", drop="enc_blocks.1.mlp.fc2.weight"))
    load(save_pth(model, tmp_path / "no_head.pth", drop="downstream_head2.dpt.head.4.weight"))  # heads: ignored
    with pytest.raises(ValueError, match=r"unexpected key\(s\): rogue\.weight"):
        load(save_pth(model, tmp_path / "foreign.pth", extra={"rogue.weight": torch.zeros(2)}))
    with pytest.raises(ValueError, match="unexpected encoder key"):
        load(save_pth(model, tmp_path / "deeper.pth", extra={"enc_blocks.2.norm1.weight": torch.zeros(64)}))
    with pytest.raises(ValueError, match="disagrees with the overrides: depth: checkpoint 2, override 4"):
        load(tmp_path / "no_head.pth", {"depth": 4})
    load(tmp_path / "no_head.pth", TINY)  # overrides that agree are fine
    with pytest.raises(ValueError, match="unknown override"):
        load_teacher(TeacherConfig(name=MAST3R, overrides={"patch_size": 8}), (56, 56), 14, device="cpu")
    with pytest.raises(ValueError, match="divisible by 4"):
        load_teacher(TeacherConfig(name=MAST3R, overrides={"embed_dim": 48, "num_heads": 8}), (56, 56), 14,
                     device="cpu")
    with pytest.raises(ValueError, match="not MASt3R"):
        load(fixture("tiny_linear.pth"))
    with pytest.raises(ValueError, match="file not found"):
        load(tmp_path / "nope.pth")


# ------------------------------------------------------------------------------------------------ Multi-HMR
def multihmr_checkpoint(path: Path, prefix: str = "backbone.encoder.", img_size: int = 56, seed: int = 5):
    """A Multi-HMR-layout checkpoint of a tiny timm DINOv2 ViT: official DINOv2 keys under `prefix`, inside
    'model_state_dict', next to head weights and the training args (a Namespace, as in the release)."""
    torch.manual_seed(seed)
    src = multihmr.create_encoder(img_size=img_size, **TINY).eval()
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.05 * torch.randn_like(p))
    official = {**src.state_dict(), "mask_token": torch.randn(1, TINY["embed_dim"])}  # timm = official + mask
    sd = {prefix + k: v for k, v in official.items()}
    sd.update({"mlp_classif.0.weight": torch.randn(8, 64), "x_attention_head.decoder.layers.0.weight":
               torch.randn(4, 4), "backbone.decoder_norm.weight": torch.ones(4)})  # unrelated: ignored
    torch.save({"model_state_dict": sd, "args": argparse.Namespace(backbone="dinov2_vitl14", img_size=896)}, path)
    return src, official


def test_multihmr_checkpoint_layout_is_the_official_dinov2_one(tmp_path):
    import json

    ref = json.loads(fixture("keys_MultiHMR_encoder_dinov2_vitl14.json").read_text())["keys"]
    assert all(k.startswith("backbone.encoder.") for k in ref)
    ref = [k.removeprefix("backbone.encoder.") for k in ref]
    keep = {k for k in ref if not k.startswith("blocks.") or int(k.split(".")[1]) < TINY["depth"]}
    _, official = multihmr_checkpoint(tmp_path / "m.pt")
    assert keep == set(official)


@pytest.mark.parametrize("prefix", ["backbone.encoder.", "encoder.backbone."])
def test_multihmr_teacher_equals_source_model(tmp_path, prefix):
    src, _ = multihmr_checkpoint(tmp_path / "multiHMR_tiny.pt", prefix)
    teacher = load_teacher(TeacherConfig(name=MHMR, checkpoint=str(tmp_path / "multiHMR_tiny.pt"), overrides=TINY),
                           (56, 56), 14, device="cpu")
    x = images((56, 56), n=3)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        feats = src.forward_features((x.permute(0, 3, 1, 2).float() / 255 - mean) / std)
    out = teacher(x)
    assert out.cls is None and teacher.provenance.num_registers == 0
    torch.testing.assert_close(out.patch, feats[:, 1:].reshape(3, 4, 4, 64), atol=1e-5, rtol=1e-5)
    assert not teacher.provenance.has_cls and teacher.provenance.family == "multihmr"


def test_multihmr_checkpoint_errors_and_pos_embed_resampling(tmp_path):
    multihmr_checkpoint(tmp_path / "m518.pt", img_size=518)  # released files: pos_embed for 518 px
    t = load_teacher(TeacherConfig(name=MHMR, checkpoint=str(tmp_path / "m518.pt"), overrides=TINY), (70, 42), 14,
                     device="cpu")
    assert t.provenance.grid_hw == (5, 3) and torch.isfinite(t(images((70, 42))).patch).all()
    ck = torch.load(tmp_path / "m518.pt", weights_only=False)
    del ck["model_state_dict"]["backbone.encoder.blocks.1.ls2.gamma"]
    torch.save(ck, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match=r"missing key\(s\): blocks\.1\.ls2\.gamma"):
        load_teacher(TeacherConfig(name=MHMR, checkpoint=str(tmp_path / "broken.pt"), overrides=TINY), (56, 56), 14,
                     device="cpu")
    with pytest.raises(ValueError, match="shape mismatch|size mismatch"):  # a ViT-L teacher, a tiny checkpoint
        load_teacher(TeacherConfig(name=MHMR, checkpoint=str(tmp_path / "m518.pt"), overrides={"depth": 2}),
                     (56, 56), 14, device="cpu")


# ------------------------------------------------------------------------------------------------ demo config
def test_multi_demo_config_parses():
    cfg = load_config(CacheConfig, REPO / "deploy/configs/cache-multi-demo.yaml")
    assert [t.name for t in cfg.teachers] == [DINO, MAST3R, MHMR]
    assert cfg.source == "skimage:" and all(t.overrides for t in cfg.teachers)
    assert all(t.grid == "student" for t in cfg.teachers)
