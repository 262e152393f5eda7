"""Fetch checkpoint bytes from a local path, an fsspec URL or a hub id, and read them without unpickling code."""

from __future__ import annotations

import hashlib
import io
from typing import Any

import fsspec
import torch

HUB_PREFIX = "hf-hub:"


def fetch_checkpoint(ref: str, storage_options: dict[str, Any] | None = None) -> bytes:
    """Bytes of a checkpoint. `hf-hub:org/repo[#file]` goes through huggingface_hub (its cache works offline)."""
    if ref.startswith(HUB_PREFIX):
        from huggingface_hub import hf_hub_download

        repo, _, filename = ref[len(HUB_PREFIX):].partition("#")
        try:
            path = hf_hub_download(repo_id=repo, filename=filename or "model.safetensors")
        except Exception as e:
            raise ValueError(f"checkpoint {ref}: cannot download from the hub ({type(e).__name__}: {e})") from None
        ref = path
    try:
        with fsspec.open(ref, "rb", **(storage_options or {})) as f:
            return f.read()
    except FileNotFoundError:
        raise ValueError(f"checkpoint {ref}: file not found") from None


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_state_dict(data: bytes, ref: str) -> dict[str, torch.Tensor]:
    """Parse safetensors or a torch pickle (weights_only: tensors and plain containers, never arbitrary objects)."""
    if data[8:9] == b"{" and not data.startswith(b"PK"):
        from safetensors.torch import load as load_safetensors

        try:
            return load_safetensors(data)
        except Exception as e:
            raise ValueError(f"checkpoint {ref}: not a valid safetensors file ({e})") from None
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"checkpoint {ref}: cannot be read as a torch checkpoint ({type(e).__name__}: {e})") from None
    for key in ("model", "state_dict", "teacher", "model_state"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"checkpoint {ref}: expected a state dict of tensors")
    return obj


def strip_prefixes(sd: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    for p in prefixes:
        if sd and all(k.startswith(p) for k in sd):
            sd = {k[len(p):]: v for k, v in sd.items()}
    return sd


def check_keys(missing: list[str], unexpected: list[str], ref: str) -> None:
    if missing or unexpected:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:12]) + (f" … (+{len(keys) - 12} more)" if len(keys) > 12 else "")
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {show(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {show(unexpected)}")
        raise ValueError(f"checkpoint {ref} does not match the architecture: " + "; ".join(parts))
