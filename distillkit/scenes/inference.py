"""Pairwise DUSt3R inference over a pair graph, the encoder run once per image; and an exact GT "oracle".

``infer_pairs`` encodes every image of a scene once (in batches), keeps the encoder tokens on the device and
decodes the directed pairs in batches from those tokens (``model.predict``): a symmetrised graph costs n
encoder passes instead of 2E. The results equal ``model(view1, view2)`` per pair (tested).

``oracle_pairs`` yields what a perfect pairwise predictor would output (both views in camera i's frame,
from GT depth, intrinsics and poses): the upper reference for the alignment and a network-free test path.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator

import numpy as np
import torch

from distillkit_schemas import NetworkProvenance

from distillkit import __version__
from distillkit.teachers.croco import RELEASED, AsymmetricCroCo3DStereo, CroCoConfig, load_model
from distillkit.teachers.croco.model import INF
from distillkit.scenes.frames import to_network

log = logging.getLogger("distillkit")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PairBatch = tuple[int, int, dict[str, np.ndarray]]  # edge range [start, stop) and pts1/pts2/conf1/conf2


def _jsonable(cfg: CroCoConfig) -> dict:
    out = {}
    for k, v in dataclasses.asdict(cfg).items():
        if isinstance(v, tuple):
            v = [("inf" if x == INF else "-inf" if x == -INF else x) if isinstance(x, float) else x for x in v]
        out[k] = v
    return out


def random_config(base: str, overrides: dict) -> CroCoConfig:
    """A released architecture with CroCoConfig field overrides (tiny test networks)."""
    if base not in RELEASED:
        raise ValueError(f"unknown base architecture {base!r}; one of {sorted(RELEASED)}")
    fields = {f.name for f in dataclasses.fields(CroCoConfig)}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise ValueError(f"unknown network override(s) {bad}; CroCoConfig fields: {sorted(fields)}")
    ov = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    return dataclasses.replace(RELEASED[base], **ov)


def build_network(checkpoint: str | None, seed: int = 0, base: str = "DUSt3R_ViTLarge_BaseDecoder_512_dpt",
                  overrides: dict | None = None, head_overrides: dict | None = None, device: str | torch.device = "cpu",
                  dtype: str = "float32", storage_options: dict | None = None
                  ) -> tuple[AsymmetricCroCo3DStereo, NetworkProvenance]:
    """Load a DUSt3R/MASt3R checkpoint strictly, or build a random network (loudly; provenance random-init:<seed>)."""
    if checkpoint:
        from distillkit.teachers.mast3r_enc import checkpoint_digest  # sha256 of .pth or config.json + safetensors

        model = load_model(checkpoint, head_overrides or None, device, storage_options=storage_options)
        digest = checkpoint_digest(checkpoint, storage_options)
        log.info("DUSt3R network %s loaded (sha256 %s…)", checkpoint, digest[:12])
    else:
        torch.manual_seed(seed)
        model = AsymmetricCroCo3DStereo(random_config(base, overrides or {})).to(device).eval().requires_grad_(False)
        digest = f"random-init:{seed}"
        log.warning("!!! the DUSt3R network has NO checkpoint: RANDOM weights (%s). Its pointmaps are meaningless; "
                    "pass network.checkpoint for real scene targets.", digest)
    prov = NetworkProvenance(predictor="network", arch=model.cfg.arch, config=_jsonable(model.cfg),
                             checkpoint=checkpoint or digest, checkpoint_sha256=digest, dtype=dtype,
                             distillkit_version=__version__)
    return model, prov


def oracle_provenance() -> NetworkProvenance:
    return NetworkProvenance(predictor="gt-depth", arch="gt-depth-oracle", checkpoint="gt-depth",
                             checkpoint_sha256="gt-depth", distillkit_version=__version__)


def _autocast(device: torch.device, dtype: str):
    enabled = device.type == "cuda" and dtype != "float32"  # heads always run in float32 (model.head)
    return torch.autocast(device.type, dtype=DTYPES[dtype], enabled=enabled)


@torch.inference_mode()
def infer_pairs(model: AsymmetricCroCo3DStereo, images: np.ndarray, edges: np.ndarray, batch_size: int = 8,
                dtype: str = "float32") -> Iterator[PairBatch]:
    """DUSt3R outputs for directed ``edges`` over uint8 ``images [n, H, W, 3]`` (one size), ``batch_size``
    images per encoder call and pairs per decoder call; yields float32 numpy batches in edge order."""
    param = next(model.parameters())
    device = param.device
    x = to_network(images).to(param.dtype)  # float32 unless the caller converted the network (e.g. to float64)
    hw = tuple(x.shape[-2:])
    feats, pos = [], None
    with _autocast(device, dtype):
        for s in range(0, len(x), batch_size):
            f, p = model.encode(x[s:s + batch_size].to(device))
            feats.append(f)
            pos = p[:1]
        feat = torch.cat(feats)
        edges_t = torch.as_tensor(np.asarray(edges, np.int64), device=device)
        for s in range(0, len(edges_t), batch_size):
            i, j = edges_t[s:s + batch_size, 0], edges_t[s:s + batch_size, 1]
            pp = pos.expand(len(i), -1, -1)
            pred1, pred2 = model.predict(feat[i], pp, hw, feat[j], pp, hw)
            out = {"pts1": pred1["pts3d"], "pts2": pred2["pts3d_in_other_view"], "conf1": pred1["conf"],
                   "conf2": pred2["conf"]}
            yield s, s + len(i), {k: v.float().cpu().numpy() for k, v in out.items()}


def _camera_points(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    H, W = depth.shape
    v, u = np.mgrid[:H, :W].astype(np.float64)
    return np.stack(((u - K[0, 2]) / K[0, 0] * depth, (v - K[1, 2]) / K[1, 1] * depth, depth), -1)


def oracle_pairs(depth: np.ndarray, K: np.ndarray, cam2world: np.ndarray, edges: np.ndarray, batch_size: int = 8,
                 conf: float = 10.0) -> Iterator[PairBatch]:
    """Exact pair outputs from GT: ``depth [n,H,W]`` (0 = invalid), ``K [n,3,3]``, ``cam2world [n,4,4]``.
    Invalid pixels get the frame's median depth and confidence ~1 (no weight in the alignment)."""
    d = np.asarray(depth, np.float64).copy()
    valid = d > 0
    for k in range(len(d)):
        d[k][~valid[k]] = np.median(d[k][valid[k]]) if valid[k].any() else 1.0
    world = [_camera_points(d[k], K[k]) @ cam2world[k, :3, :3].T + cam2world[k, :3, 3] for k in range(len(d))]
    cw = np.where(valid, conf, 1.0 + 1e-3).astype(np.float32)
    edges = np.asarray(edges, np.int64)
    for s in range(0, len(edges), batch_size):
        out = {"pts1": [], "pts2": [], "conf1": [], "conf2": []}
        for i, j in edges[s:s + batch_size].tolist():
            R, t = cam2world[i, :3, :3], cam2world[i, :3, 3]
            out["pts1"].append(((world[i] - t) @ R).astype(np.float32))
            out["pts2"].append(((world[j] - t) @ R).astype(np.float32))
            out["conf1"].append(cw[i])
            out["conf2"].append(cw[j])
        yield s, min(s + batch_size, len(edges)), {k: np.stack(v) for k, v in out.items()}
