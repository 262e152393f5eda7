"""Teacher checkpoint loading: timm/official/transformers layouts, pth/safetensors, strict keys, safe unpickling."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from distillkit.config.cache import TeacherConfig
from distillkit.teachers import registry
from distillkit.teachers.registry import load_teacher, teacher_input_hw

IMAGE_HW = (56, 56)
STUDENT_PATCH = 14
REG = "dinov2_vits14_reg"
PLAIN = "dinov2_vits14"


@pytest.fixture(autouse=True)
def _fresh_registry():
    registry._LOADED.clear()
    yield
    registry._LOADED.clear()


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    rng = np.random.default_rng(123)
    return torch.from_numpy(rng.integers(0, 256, (2, *IMAGE_HW, 3), dtype=np.uint8))


def _load(name: str, checkpoint: str | None = None, seed: int = 0):
    cfg = TeacherConfig(name=name, checkpoint=checkpoint, seed=seed, overrides={"depth": 2})
    return load_teacher(cfg, IMAGE_HW, STUDENT_PATCH, device="cpu")


def _outputs(teacher, batch):
    out = teacher(batch)
    return out.cls, out.patch


def _assert_same(teacher, ref, batch):
    cls, patch = _outputs(teacher, batch)
    assert cls.shape == ref[0].shape and patch.shape == ref[1].shape
    assert torch.allclose(cls, ref[0], atol=1e-6, rtol=0)
    assert torch.allclose(patch, ref[1], atol=1e-6, rtol=0)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def reference(batch):
    """name -> (timm state dict, (cls, patch)) of a random-init teacher with seed 1."""
    registry._LOADED.clear()
    out = {}
    for name in (REG, PLAIN):
        t = _load(name, seed=1)
        sd = {k: v.detach().clone() for k, v in t.module.state_dict().items()}
        out[name] = (sd, _outputs(t, batch))
    registry._LOADED.clear()
    return out


def _to_official(sd: dict[str, torch.Tensor], registers: bool) -> dict[str, torch.Tensor]:
    """timm DINOv2 state dict -> facebookresearch/dinov2 layout."""
    off = {k: v.clone() for k, v in sd.items()}
    c = sd["cls_token"].shape[-1]
    if registers:
        off["register_tokens"] = off.pop("reg_token")
        off["pos_embed"] = torch.cat([torch.zeros(1, 1, c), sd["pos_embed"]], dim=1)
        off["cls_token"] = sd["cls_token"] - off["pos_embed"][:, :1]
    off["mask_token"] = torch.zeros(1, c)
    return off


def _to_transformers(off: dict[str, torch.Tensor], depth: int = 2) -> dict[str, torch.Tensor]:
    """official DINOv2 layout -> Hugging Face transformers Dinov2Model layout."""
    c = off["cls_token"].shape[-1]
    hf = {
        "embeddings.cls_token": off["cls_token"],
        "embeddings.mask_token": off["mask_token"].reshape(1, 1, c),
        "embeddings.position_embeddings": off["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": off["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": off["patch_embed.proj.bias"],
        "layernorm.weight": off["norm.weight"],
        "layernorm.bias": off["norm.bias"],
    }
    if "register_tokens" in off:
        hf["embeddings.register_tokens"] = off["register_tokens"]
    for i in range(depth):
        b, e = f"blocks.{i}.", f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            q, k, v = off[f"{b}attn.qkv.{kind}"].chunk(3, dim=0)
            hf[f"{e}attention.attention.query.{kind}"] = q
            hf[f"{e}attention.attention.key.{kind}"] = k
            hf[f"{e}attention.attention.value.{kind}"] = v
            hf[f"{e}attention.output.dense.{kind}"] = off[f"{b}attn.proj.{kind}"]
            for n in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                hf[f"{e}{n}.{kind}"] = off[f"{b}{n}.{kind}"]
        hf[f"{e}layer_scale1.lambda1"] = off[f"{b}ls1.gamma"]
        hf[f"{e}layer_scale2.lambda1"] = off[f"{b}ls2.gamma"]
    assert len(hf) == 7 + ("register_tokens" in off) + depth * 18
    return {k: v.contiguous().clone() for k, v in hf.items()}


# --------------------------------------------------------------------------------------------------- formats


@pytest.mark.parametrize("name", [REG, PLAIN])
@pytest.mark.parametrize("fmt", ["pth", "pth-model", "pth-state_dict", "safetensors"])
def test_timm_format_round_trip(tmp_path, reference, batch, name, fmt):
    sd, ref = reference[name]
    if fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        path = tmp_path / f"{fmt}.pth"
        obj = {"pth": sd, "pth-model": {"model": sd, "epoch": 3}, "pth-state_dict": {"state_dict": sd}}[fmt]
        torch.save(obj, path)
    t = _load(name, str(path))
    _assert_same(t, ref, batch)
    assert t.provenance.checkpoint == str(path)
    assert t.provenance.checkpoint_sha256 == _sha(path)
    assert not t.provenance.is_random_init


def test_checkpoint_actually_replaces_init(reference, batch):
    """Sanity of the reference: a different seed gives different outputs, so equality above means loaded weights."""
    t = _load(REG, seed=0)
    cls, _ = _outputs(t, batch)
    assert not torch.allclose(cls, reference[REG][1][0])


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_official_dinov2_registers(tmp_path, reference, batch, fmt):
    sd, ref = reference[REG]
    off = _to_official(sd, registers=True)
    assert "reg_token" not in off and off["pos_embed"].shape[1] == sd["pos_embed"].shape[1] + 1
    if fmt == "pth":
        path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
        torch.save(off, path)
    else:
        path = tmp_path / "official.safetensors"
        save_file(off, str(path))
    t = _load(REG, str(path))
    _assert_same(t, ref, batch)
    assert t.provenance.checkpoint_sha256 == _sha(path)
    assert t.provenance.num_registers == 4


def test_official_dinov2_registers_nonzero_cls_position(tmp_path, reference, batch):
    """The official cls position of pos_embed is folded into timm's cls_token (cls + pos[0])."""
    sd, _ = reference[REG]
    off = _to_official(sd, registers=True)
    shift = torch.randn(1, 1, off["cls_token"].shape[-1], generator=torch.Generator().manual_seed(5))
    off["pos_embed"][:, :1] = shift
    path = tmp_path / "official_shift.pth"
    torch.save(off, path)
    # the same weights in timm layout: cls_token absorbs the cls position, pos_embed drops it
    timm_sd = dict(sd, cls_token=off["cls_token"] + shift)
    timm_path = tmp_path / "timm_shift.pth"
    torch.save(timm_sd, timm_path)
    expected = _outputs(_load(REG, str(timm_path)), batch)
    assert not torch.allclose(expected[0], reference[REG][1][0])  # the shift matters
    _assert_same(_load(REG, str(path)), expected, batch)


def test_official_dinov2_no_registers(tmp_path, reference, batch):
    sd, ref = reference[PLAIN]
    off = _to_official(sd, registers=False)
    assert set(off) == set(sd) | {"mask_token"}
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(off, path)
    t = _load(PLAIN, str(path))
    _assert_same(t, ref, batch)
    assert t.provenance.num_registers == 0


@pytest.mark.parametrize("name", [REG, PLAIN])
def test_transformers_layout(tmp_path, reference, batch, name):
    sd, ref = reference[name]
    hf = _to_transformers(_to_official(sd, registers=name == REG))
    assert all(k.startswith(("embeddings.", "encoder.layer.", "layernorm.")) for k in hf)
    assert ("embeddings.register_tokens" in hf) == (name == REG)
    path = tmp_path / "model.safetensors"
    save_file(hf, str(path))
    t = _load(name, str(path))
    _assert_same(t, ref, batch)
    assert t.provenance.checkpoint_sha256 == _sha(path)


def test_transformers_layout_2d_mask_token(tmp_path, reference, batch):
    """transformers stores mask_token as (1, C); both shapes load."""
    sd, ref = reference[REG]
    hf = _to_transformers(_to_official(sd, registers=True))
    hf["embeddings.mask_token"] = hf["embeddings.mask_token"].reshape(1, -1).contiguous()
    path = tmp_path / "model2d.safetensors"
    save_file(hf, str(path))
    _assert_same(_load(REG, str(path)), ref, batch)


def test_prefixed_state_dict(tmp_path, reference, batch):
    sd, ref = reference[REG]
    path = tmp_path / "ddp.pth"
    torch.save({"module." + k: v for k, v in sd.items()}, path)
    _assert_same(_load(REG, str(path)), ref, batch)


# --------------------------------------------------------------------------------------------------- errors


def test_missing_keys_reported(tmp_path, reference):
    sd = dict(reference[REG][0])
    removed = ["blocks.1.mlp.fc1.weight", "blocks.1.norm2.bias"]
    for k in removed:
        del sd[k]
    path = tmp_path / "missing.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError) as e:
        _load(REG, str(path))
    msg = str(e.value)
    assert "missing" in msg and any(k in msg for k in removed) and str(path) in msg


def test_unexpected_key_reported(tmp_path, reference):
    sd = dict(reference[REG][0])
    sd["blocks.0.surprise.weight"] = torch.zeros(3)
    path = tmp_path / "extra.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    with pytest.raises(ValueError) as e:
        _load(REG, str(path))
    assert "unexpected" in str(e.value) and "blocks.0.surprise.weight" in str(e.value)
    assert "missing" not in str(e.value)


def test_wrong_architecture_checkpoint_rejected(tmp_path, reference):
    """A no-register checkpoint into a register model: refused with a ValueError naming the checkpoint."""
    path = tmp_path / "plain.pth"
    torch.save(reference[PLAIN][0], path)
    with pytest.raises(ValueError) as e:
        _load(REG, str(path))
    assert str(path) in str(e.value)


def test_checkpoint_pos_embed_resampled_to_input_size(tmp_path, batch):
    """Official checkpoints come at another resolution: the position embedding is resampled to input_hw."""
    registry._LOADED.clear()
    cfg = TeacherConfig(name=REG, seed=1, overrides={"depth": 2})
    big = load_teacher(cfg, (112, 112), STUDENT_PATCH, device="cpu")
    assert big.module.pos_embed.shape[1] == 64
    path = tmp_path / "official112.pth"
    torch.save(_to_official(big.module.state_dict(), registers=True), path)
    t = load_teacher(TeacherConfig(name=REG, checkpoint=str(path), overrides={"depth": 2}), (56, 84), STUDENT_PATCH,
                     device="cpu")
    assert t.provenance.grid_hw == (4, 6) and t.module.pos_embed.shape[1] == 24
    out = t(torch.zeros(1, 56, 84, 3, dtype=torch.uint8))
    assert out.patch.shape == (1, 4, 6, 384) and torch.isfinite(out.patch).all()
    assert torch.equal(t.module.blocks[0].attn.qkv.weight, big.module.blocks[0].attn.qkv.weight)


@pytest.mark.parametrize("suffix, data", [
    (".pth", b"garbage" * 100),
    (".safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{broken json"),
    (".pth", b""),
])
def test_garbage_file_rejected(tmp_path, suffix, data):
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(data)
    with pytest.raises(ValueError) as e:
        _load(REG, str(path))
    assert str(path) in str(e.value)


class _Evil:
    ran: list[str] = []

    def __reduce__(self):
        return (_Evil.ran.append, ("code ran",))


def test_pickle_with_custom_object_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "extra": _Evil()}, path)
    _Evil.ran.clear()
    with pytest.raises(ValueError) as e:
        _load(REG, str(path))
    assert str(path) in str(e.value)
    assert _Evil.ran == []  # nothing was executed while reading


def test_non_tensor_state_dict_refused(tmp_path):
    path = tmp_path / "notensors.pth"
    torch.save({"a": 1, "b": [1, 2]}, path)
    with pytest.raises(ValueError, match="state dict of tensors"):
        _load(REG, str(path))


def test_missing_checkpoint_path(tmp_path):
    path = tmp_path / "does-not-exist.pth"
    with pytest.raises(ValueError) as e:
        _load(REG, str(path))
    assert "not found" in str(e.value) and str(path) in str(e.value)


# --------------------------------------------------------------------------------------------------- random init


def test_random_init_provenance_and_determinism(batch):
    a = _load(REG, seed=7)
    assert a.provenance.checkpoint_sha256 == "random-init:7"
    assert a.provenance.checkpoint == "random-init:7"
    assert a.provenance.is_random_init
    assert a.provenance.input_hw == IMAGE_HW and a.provenance.grid_hw == (4, 4)
    assert a.provenance.embed_dim == 384 and a.provenance.arch_overrides == {"depth": 2}
    out_a = _outputs(a, batch)
    assert out_a[0].shape == (2, 384) and out_a[1].shape == (2, 4, 4, 384)
    assert torch.isfinite(out_a[1]).all()

    registry._LOADED.clear()
    b = _load(REG, seed=7)
    assert b is not a
    out_b = _outputs(b, batch)
    assert torch.equal(out_a[0], out_b[0]) and torch.equal(out_a[1], out_b[1])

    c = _load(REG, seed=8)
    assert c.provenance.checkpoint_sha256 == "random-init:8"
    out_c = _outputs(c, batch)
    assert not torch.allclose(out_a[0], out_c[0]) and not torch.allclose(out_a[1], out_c[1])


def test_registry_reuses_loaded_teacher():
    a = _load(REG, seed=3)
    assert _load(REG, seed=3) is a
    assert _load(REG, seed=4) is not a


def test_registry_reloads_changed_checkpoint(tmp_path, reference):
    path = tmp_path / "w.pth"
    torch.save(reference[REG][0], path)
    first = _load(REG, str(path))
    assert first.provenance.checkpoint_sha256 == _sha(path)
    sd = {k: v + 1.0 if k == "norm.bias" else v for k, v in reference[REG][0].items()}
    torch.save(sd, path)  # new weights, same path (e.g. a re-exported checkpoint in a long-lived worker)
    second = _load(REG, str(path))
    assert second.provenance.checkpoint_sha256 == _sha(path)


def test_teacher_input_hw():
    assert teacher_input_hw("dinov2_vits14", (224, 336), 16) == (196, 294)
    assert teacher_input_hw("dinov2_vits14_reg", (224, 224), 14) == (224, 224)
    with pytest.raises(ValueError, match="unknown teacher"):
        teacher_input_hw("resnet50", (224, 224), 16)
