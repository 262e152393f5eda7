"""Load (and write) DUSt3R / MASt3R checkpoints into our network, strictly.

Two layouts are read, from a local path or any fsspec URL (``hf-hub:org/repo`` for the Hugging Face hub):

* the released ``.pth``: ``{'model': state_dict, 'args': Namespace(model="AsymmetricCroCo3DStereo(...)")}``.
  Read with ``weights_only=True`` (only ``argparse.Namespace`` is allow-listed, no arbitrary objects are
  unpickled); the constructor string is parsed with ``ast``, never evaluated.
* the Hugging Face layout: ``config.json`` (constructor kwargs; Python's json writes ``Infinity``) +
  ``model.safetensors``, where each aliased DPT convolution is stored under one name only.

The official loader uses ``strict=False``; we require every key and shape to match (aliases aside), so a
wrong or damaged file fails with a ``ValueError`` naming the offending keys.
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import posixpath
import re
from collections.abc import Mapping
from typing import Any

import fsspec
import fsspec.implementations.local
import torch

from distillkit.teachers.croco.model import INF, AsymmetricCroCo3DStereo, CroCoConfig

ARCHS = ("AsymmetricCroCo3DStereo", "AsymmetricMASt3R")
HUB_PREFIX = "hf-hub:"
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
HEAD_OVERRIDE_KEYS = ("feature_dim", "last_dim", "layer_dims", "hidden_dim_factor")
OVERRIDES_CONFIG_KEY = "distillkit_head_overrides"  # only written for non-released head widths

# Constructor defaults of the official classes (CroCoNet / AsymmetricCroCo3DStereo / AsymmetricMASt3R): a
# string that omits an argument means these values, not the released ViT-L ones.
_OFFICIAL_DEFAULTS: dict[str, Any] = dict(
    img_size=224, patch_size=16, enc_embed_dim=768, enc_depth=12, enc_num_heads=12, dec_embed_dim=512,
    dec_depth=8, dec_num_heads=16, mlp_ratio=4, norm_im2_in_dec=True, pos_embed="cosine", output_mode="pts3d",
    head_type="linear", depth_mode=("exp", -INF, INF), conf_mode=("exp", 1, INF), desc_mode="norm",
    two_confs=False, desc_conf_mode=None,
)
_IGNORED_KWARGS = {"patch_embed_cls", "landscape_only", "freeze", "mask_ratio"}  # training-time only
_PATCH_EMBEDS = {"PatchEmbedDust3R", "ManyAR_PatchEmbed"}  # same weights; inference uses the plain one


# ---------------------------------------------------------------------------------------------- config
def _literal(node: ast.AST) -> Any:
    """``ast.literal_eval`` plus the names ``inf``/``nan`` used in the released strings."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.Tuple, ast.List)):
        return tuple(_literal(e) for e in node.elts)
    if isinstance(node, ast.Name) and node.id in ("inf", "nan"):
        return float(node.id)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal(node.operand)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return -value if isinstance(node.op, ast.USub) else value
    raise ValueError(f"unsupported expression {ast.unparse(node)!r}")


def parse_constructor(call: str) -> tuple[str, dict[str, Any]]:
    """``"AsymmetricCroCo3DStereo(a=1, b=('exp', -inf, inf))"`` -> (class name, kwargs)."""
    try:
        node = ast.parse(call.strip(), mode="eval").body
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)) or node.args:
            raise ValueError("expected a call with keyword arguments only")
        if node.func.id not in ARCHS:
            raise ValueError(f"unknown model class {node.func.id!r} (supported: {', '.join(ARCHS)})")
        if any(kw.arg is None for kw in node.keywords):
            raise ValueError("**kwargs are not supported")
        return node.func.id, {kw.arg: _literal(kw.value) for kw in node.keywords}
    except (SyntaxError, ValueError) as e:
        raise ValueError(f"cannot parse the model constructor string {call!r}: {e}") from None


def _mode(value: Any) -> tuple[str, float, float] | None:
    if value is None:
        return None
    kind, vmin, vmax = value
    return str(kind), float(vmin), float(vmax)  # float('inf') also reads JSON-as-string infinities


def config_from_kwargs(kwargs: Mapping[str, Any], arch: str = "AsymmetricCroCo3DStereo",
                       head_overrides: Mapping[str, Any] | None = None) -> CroCoConfig:
    """Constructor kwargs of the official class (+ head widths the official factory hard-codes) -> config."""
    kw = {k: v for k, v in kwargs.items() if k not in _IGNORED_KWARGS}
    unknown = sorted(set(kw) - set(_OFFICIAL_DEFAULTS))
    if unknown:
        raise ValueError(f"unsupported constructor argument(s) {unknown}")
    if kwargs.get("patch_embed_cls", "PatchEmbedDust3R") not in _PATCH_EMBEDS:
        raise ValueError(f"unsupported patch_embed_cls {kwargs['patch_embed_cls']!r}")
    a = {**_OFFICIAL_DEFAULTS, **kw}
    rope = re.fullmatch(r"RoPE(\d+(?:\.\d+)?)", str(a["pos_embed"]))
    if not rope:
        raise ValueError(f"pos_embed {a['pos_embed']!r} is not supported (released models use 'RoPE100')")
    if not a["norm_im2_in_dec"]:
        raise ValueError("norm_im2_in_dec=False is not supported (released models use True)")
    if a["desc_mode"] not in ("norm", ("norm",)):
        raise ValueError(f"unsupported desc_mode {a['desc_mode']!r}")
    out = re.fullmatch(r"pts3d(?:\+desc(\d+))?", str(a["output_mode"]))
    if not out:
        raise ValueError(f"unsupported output_mode {a['output_mode']!r}")
    img = a["img_size"]
    ov = dict(head_overrides or {})
    bad = sorted(set(ov) - set(HEAD_OVERRIDE_KEYS))
    if bad:
        raise ValueError(f"unknown head override(s) {bad} (allowed: {', '.join(HEAD_OVERRIDE_KEYS)})")
    widths = {f"dpt_{k}": v for k, v in ov.items() if k in ("feature_dim", "last_dim")}
    if "layer_dims" in ov:
        widths["dpt_layer_dims"] = tuple(int(d) for d in ov["layer_dims"])
    if "hidden_dim_factor" in ov:
        widths["local_mlp_hidden_factor"] = float(ov["hidden_dim_factor"])
    return CroCoConfig(
        head_type=a["head_type"], enc_embed_dim=int(a["enc_embed_dim"]), enc_depth=int(a["enc_depth"]),
        enc_num_heads=int(a["enc_num_heads"]), dec_embed_dim=int(a["dec_embed_dim"]), dec_depth=int(a["dec_depth"]),
        dec_num_heads=int(a["dec_num_heads"]), patch_size=int(a["patch_size"]), mlp_ratio=float(a["mlp_ratio"]),
        rope_base=float(rope.group(1)), depth_mode=_mode(a["depth_mode"]), conf_mode=_mode(a["conf_mode"]),
        desc_dim=int(out.group(1) or 0), two_confs=bool(a["two_confs"]), desc_conf_mode=_mode(a["desc_conf_mode"]),
        img_size=(int(img), int(img)) if isinstance(img, (int, float)) else tuple(int(s) for s in img),
        arch=arch, **widths,
    )


def config_to_kwargs(cfg: CroCoConfig) -> dict[str, Any]:
    """Official constructor kwargs for ``cfg`` (what the Hugging Face ``config.json`` holds)."""
    kw: dict[str, Any] = dict(
        pos_embed=f"RoPE{cfg.rope_base:g}", img_size=list(cfg.img_size), head_type=cfg.head_type,
        output_mode=cfg.output_mode, depth_mode=list(cfg.depth_mode), conf_mode=list(cfg.conf_mode),
        enc_embed_dim=cfg.enc_embed_dim, enc_depth=cfg.enc_depth, enc_num_heads=cfg.enc_num_heads,
        dec_embed_dim=cfg.dec_embed_dim, dec_depth=cfg.dec_depth, dec_num_heads=cfg.dec_num_heads,
    )
    if cfg.patch_size != 16 or cfg.mlp_ratio != 4:
        kw.update(patch_size=cfg.patch_size, mlp_ratio=cfg.mlp_ratio)
    if cfg.desc_dim:
        kw.update(two_confs=cfg.two_confs, desc_conf_mode=list(cfg.desc_conf_mode) if cfg.desc_conf_mode else None)
    return kw


def head_overrides_of(cfg: CroCoConfig) -> dict[str, Any]:
    """Head widths that differ from the released ones (empty for released configs)."""
    ref = CroCoConfig()
    ov: dict[str, Any] = {}
    if cfg.head_type != "linear":
        for key in ("feature_dim", "last_dim", "layer_dims"):
            value = getattr(cfg, f"dpt_{key}")
            if value != getattr(ref, f"dpt_{key}"):
                ov[key] = list(value) if key == "layer_dims" else value
    if cfg.head_type == "catmlp+dpt" and cfg.local_mlp_hidden_factor != ref.local_mlp_hidden_factor:
        ov["hidden_dim_factor"] = cfg.local_mlp_hidden_factor
    return ov


# ---------------------------------------------------------------------------------------------- state dicts
def alias_groups(model: torch.nn.Module) -> list[list[str]]:
    """state_dict names that refer to one tensor (the DPT's ``layer{i}_rn`` / ``layer_rn.{i-1}``), first name first."""
    groups: dict[int, list[str]] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(t), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a is b or (a.shape == b.shape and a.data_ptr() == b.data_ptr() and a.stride() == b.stride()):
        return True
    return a.shape == b.shape and bool(torch.equal(a, b))


def _show(keys: list[str], n: int = 10) -> str:
    return ", ".join(keys[:n]) + (f" … (+{len(keys) - n} more)" if len(keys) > n else "")


def load_state_dict_strict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], ref: str) -> None:
    """Load with every key and shape checked. An alias may be given under any one of its names.

    Uses ``assign=True`` so a model built on the meta device takes the checkpoint tensors without a copy.
    """
    sd = dict(state_dict)
    for names in alias_groups(model):
        present = [n for n in names if n in sd]
        if not present:
            continue
        first = sd[present[0]]
        for n in present[1:]:
            if not _same(first, sd[n]):
                raise ValueError(f"checkpoint {ref}: aliased keys {present[0]} and {n} hold different tensors")
        for n in names:
            sd.setdefault(n, first)
    expected = model.state_dict(keep_vars=True)
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    mismatched = [f"{k} (checkpoint {tuple(sd[k].shape)}, model {tuple(v.shape)})"
                  for k, v in expected.items() if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    problems = (("missing key(s)", missing), ("unexpected key(s)", unexpected), ("shape mismatch(es)", mismatched))
    parts = [f"{len(keys)} {what}: {_show(keys)}" for what, keys in problems if keys]
    if parts:
        raise ValueError(f"checkpoint {ref} does not match the {model.cfg.arch if hasattr(model, 'cfg') else 'model'} "
                         "architecture: " + "; ".join(parts))
    model.load_state_dict(sd, strict=True, assign=True)


# ---------------------------------------------------------------------------------------------- files
def _short(e: Exception) -> str:
    """First sentence of an exception, for one-line error messages."""
    lines = str(e).strip().splitlines()
    first = lines[0] if lines else ""
    cut = first.find(". ", 40)
    return f"{type(e).__name__}: {first[:cut + 1] if cut > 0 else first}"[:240]


def _resolve(ref: str, storage_options: Mapping[str, Any] | None):
    """(fs, path); ``hf-hub:org/repo`` becomes the local snapshot of its config.json + model.safetensors."""
    if ref.startswith(HUB_PREFIX):
        from huggingface_hub import hf_hub_download

        repo = ref[len(HUB_PREFIX):]
        try:
            for name in (CONFIG_NAME, WEIGHTS_NAME):
                local = hf_hub_download(repo_id=repo, filename=name)
        except Exception as e:
            raise ValueError(f"checkpoint {ref}: cannot download from the hub ({_short(e)})") from None
        ref = posixpath.dirname(local)
    return fsspec.core.url_to_fs(ref, **dict(storage_options or {}))


def _read_torch(fs, path: str, ref: str) -> Any:
    local = isinstance(fs, fsspec.implementations.local.LocalFileSystem)
    try:
        with fs.open(path, "rb") as f:
            zipped = f.read(2) == b"PK"
        with torch.serialization.safe_globals([argparse.Namespace]):
            if local:  # mmap: the 2+ GB weights are not read twice
                return torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
            with fs.open(path, "rb") as f:
                return torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"checkpoint {ref}: file not found") from None
    except Exception as e:  # truncated zip, not a pickle, disallowed globals, ...
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found:
            raise ValueError(f"checkpoint {ref}: not a readable torch checkpoint: it pickles {found.group(1)}; only "
                             "tensors, plain containers and argparse.Namespace are allowed") from None
        raise ValueError(f"checkpoint {ref}: not a readable torch checkpoint: truncated, corrupted or another "
                         f"format ({_short(e)})") from None


def _read_hf(fs, folder: str, weights: str, ref: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from safetensors.torch import load as st_load
    from safetensors.torch import load_file as st_load_file

    cfg_path = posixpath.join(folder, CONFIG_NAME)
    try:
        with fs.open(cfg_path, "rb") as f:
            config = json.loads(f.read())  # accepts the Infinity / -Infinity tokens
    except FileNotFoundError:
        raise ValueError(f"checkpoint {ref}: no {CONFIG_NAME} next to the safetensors weights") from None
    except ValueError as e:
        raise ValueError(f"checkpoint {ref}: {CONFIG_NAME} is not valid JSON ({_short(e)})") from None
    if not isinstance(config, dict):
        raise ValueError(f"checkpoint {ref}: {CONFIG_NAME} must hold the constructor kwargs as an object")
    try:
        if isinstance(fs, fsspec.implementations.local.LocalFileSystem):
            sd = st_load_file(weights)
        else:
            with fs.open(weights, "rb") as f:
                sd = st_load(f.read())
    except FileNotFoundError:
        raise ValueError(f"checkpoint {ref}: {weights} not found") from None
    except Exception as e:
        raise ValueError(f"checkpoint {ref}: not a valid safetensors file ({_short(e)})") from None
    return config, sd


def read_checkpoint(ref: str, storage_options: Mapping[str, Any] | None = None
                    ) -> tuple[str, dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """(class name, constructor kwargs, state_dict, head overrides stored with it) of a checkpoint."""
    fs, path = _resolve(ref, storage_options)
    path = path.rstrip("/")
    if fs.isdir(path):
        folder, weights = path, posixpath.join(path, WEIGHTS_NAME)
    elif path.endswith(".safetensors"):
        folder, weights = posixpath.dirname(path), path
    else:
        folder = weights = None
    if weights is not None:
        config, sd = _read_hf(fs, folder, weights, ref)
        overrides = config.pop(OVERRIDES_CONFIG_KEY, None) or {}
        arch = "AsymmetricMASt3R" if config.get("head_type") == "catmlp+dpt" else "AsymmetricCroCo3DStereo"
        return arch, config, sd, overrides

    obj = _read_torch(fs, path, ref)
    if not (isinstance(obj, dict) and isinstance(obj.get("model"), dict)):
        raise ValueError(f"checkpoint {ref}: not a DUSt3R/MASt3R checkpoint (expected a dict with a 'model' "
                         "state dict and 'args')")
    sd = obj["model"]
    if not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"checkpoint {ref}: 'model' holds non-tensor values")
    args = obj.get("args")
    call = args.get("model") if isinstance(args, dict) else getattr(args, "model", None)
    if not isinstance(call, str):
        raise ValueError(f"checkpoint {ref}: no 'args.model' constructor string; cannot tell the architecture")
    arch, kwargs = parse_constructor(call)
    return arch, kwargs, sd, {}


def load_model(ref: str, head_overrides: Mapping[str, Any] | None = None, device: torch.device | str = "cpu",
               dtype: torch.dtype | None = None, storage_options: Mapping[str, Any] | None = None
               ) -> AsymmetricCroCo3DStereo:
    """Build the network a checkpoint describes and load it strictly; eval mode, gradients off.

    ``head_overrides`` (keys ``feature_dim``, ``last_dim``, ``layer_dims``, ``hidden_dim_factor``) are needed
    only for non-released head widths, which the official constructor string cannot express.
    """
    arch, kwargs, sd, stored = read_checkpoint(ref, storage_options)
    cfg = config_from_kwargs(kwargs, arch, head_overrides if head_overrides is not None else stored)
    with torch.device("meta"):  # no random init of ~600 M parameters; tensors come from the file
        model = AsymmetricCroCo3DStereo(cfg)
    load_state_dict_strict(model, sd, ref)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def save_hf(model: AsymmetricCroCo3DStereo, folder: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Write ``config.json`` + ``model.safetensors`` the way the Hugging Face exports do (one name per alias)."""
    from safetensors.torch import save as st_save

    dropped = {n for names in alias_groups(model) for n in names[1:]}
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k not in dropped}
    config = config_to_kwargs(model.cfg)
    overrides = head_overrides_of(model.cfg)
    if overrides:
        config[OVERRIDES_CONFIG_KEY] = overrides
    fs, path = fsspec.core.url_to_fs(folder, **dict(storage_options or {}))
    fs.makedirs(path, exist_ok=True)
    with fs.open(posixpath.join(path, CONFIG_NAME), "w") as f:
        f.write(json.dumps(config, indent=2))  # allow_nan: writes Infinity like the hub mixin
    with fs.open(posixpath.join(path, WEIGHTS_NAME), "wb") as f:
        f.write(st_save(sd, metadata={"format": "pt"}))


__all__ = [
    "alias_groups", "config_from_kwargs", "config_to_kwargs", "head_overrides_of", "load_model",
    "load_state_dict_strict", "parse_constructor", "read_checkpoint", "save_hf",
]
