"""Teacher-target normalisation applied at read time (the store keeps raw features).

standard  per-channel (x - mean) / std with the store's exact statistics (DUNE/UNIC standardise per channel;
          the std is floored at 1e-3 as DUNE's teacher norm does).
phi-s     PHI-S (RADIO v2.5): centre, rotate into the eigenbasis of the covariance, spread the variance evenly
          with a Hadamard rotation, divide by sqrt(mean eigenvalue): an isotropic map, so every output dimension
          has the same variance and distances are kept up to one scale. The covariance is computed exactly over
          (up to `max_samples`) training samples of the store. Hadamard matrices come from Sylvester doubling of
          order 1 or of a Paley matrix (orders 2^k and 12*2^k, 20*2^k, ...: every usual ViT width); for other
          widths a fixed seeded random rotation balances the variances only approximately.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import torch

from distillkit_schemas import paths

from distillkit.store import rowbits
from distillkit.store.reader import StoreSource

STD_FLOOR = 1e-3


def _paley(q: int) -> np.ndarray:
    """Hadamard matrix of order q + 1 (Paley construction I, q prime with q % 4 == 3)."""
    residues = {(i * i) % q for i in range(1, q)}
    chi = np.array([0] + [1 if k in residues else -1 for k in range(1, q)])
    jac = np.array([[chi[(j - i) % q] for j in range(q)] for i in range(q)])
    s = np.zeros((q + 1, q + 1))
    s[0, 1:], s[1:, 0], s[1:, 1:] = 1, -1, jac
    return s + np.eye(q + 1)


def hadamard(c: int) -> np.ndarray | None:
    """A normalised Hadamard matrix of order c = 2^k or (q+1)*2^k (q prime, q%4==3: 12, 20, 24, ...), else None.
    Covers every usual ViT width: 192, 384, 768, 1024, 1536."""
    base = c
    while base % 2 == 0 and base > 1:
        base //= 2
    if base == 1:
        h = np.array([[1.0]])
    else:
        for q in (3, 7, 11, 19, 23, 31, 43, 47, 59, 67, 71, 79, 83):
            if c % (q + 1) == 0 and ((c // (q + 1)) & (c // (q + 1) - 1)) == 0:
                h = _paley(q)
                break
        else:
            return None
    while h.shape[0] < c:
        h = np.block([[h, h], [h, -h]])
    return h / math.sqrt(c)


def _rotation(c: int, seed: int = 0) -> np.ndarray:
    h = hadamard(c)
    if h is not None:
        return h
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((c, c)))
    return q * np.sign(np.diag(r))


def _features(src: StoreSource, teacher: str, kind: str, max_samples: int) -> np.ndarray:
    """Raw features [n(, tokens), C] of valid training rows, shard by shard, in store order."""
    size = src.manifest.shard_size
    usable = src.usable_bits("train")
    out, taken = [], 0
    for start in range(0, src.n, size):
        stop = min(start + size, src.n)
        rows = rowbits.rows(usable, start, stop)
        if not rows.any():
            continue
        x = src.read_targets(paths.target(teacher, kind), start, stop)[rows].astype(np.float64)
        out.append(x.reshape(-1, x.shape[-1]))
        taken += int(rows.sum())
        if taken >= max_samples:
            break
    return np.concatenate(out)


class TargetNorm:
    """Forward (raw -> target space) and inverse maps per (teacher, token kind)."""

    def __init__(self, sources: dict[str, StoreSource], device: torch.device, mode: str = "standard",
                 max_samples: int = 2048):
        self.mode = mode
        self.params: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
        self.decoders = {}  # teacher -> decode(stored batch, token), for sources that hand over the stored codes
        for teacher, src in sources.items():
            if src.on_device:
                self.decoders[teacher] = partial(src.codecs[teacher].to(device).decode, target=src.decode)
            stats = src.stats(teacher)
            for kind in ("patch", "cls"):
                if mode == "standard":
                    p = {"mean": stats[f"{kind}_mean"], "std": np.maximum(stats[f"{kind}_std"], STD_FLOOR)}
                else:
                    x = _features(src, teacher, kind, max_samples)
                    mean = x.mean(axis=0)
                    cov = np.cov(x - mean, rowvar=False, bias=True)
                    evals, evecs = np.linalg.eigh(cov)
                    rot = _rotation(x.shape[1]) @ evecs.T
                    p = {"mean": mean, "rot": rot, "scale": np.sqrt(max(evals.mean(), 1e-12))}
                self.params[(teacher, kind)] = {k: torch.as_tensor(np.asarray(v), dtype=torch.float32,
                                                                    device=device) for k, v in p.items()}

    def raw(self, teacher: str, kind: str, x: torch.Tensor) -> torch.Tensor:
        """A batch as read from the store -> the teacher's features (or PCA coefficients): compact codes are
        decoded here, on the training device, so the loader moves and holds only the compact bytes."""
        dec = self.decoders.get(teacher)
        return dec(x, kind) if dec is not None else x

    def __call__(self, teacher: str, kind: str, x: torch.Tensor) -> torch.Tensor:
        p = self.params[(teacher, kind)]
        x = self.raw(teacher, kind, x).float() - p["mean"]
        if self.mode == "standard":
            return x / p["std"]
        return (x @ p["rot"].T) / p["scale"]

    def invert(self, teacher: str, kind: str, y: torch.Tensor) -> torch.Tensor:
        p = self.params[(teacher, kind)]
        y = y.float()
        if self.mode == "standard":
            return y * p["std"] + p["mean"]
        return (y * p["scale"]) @ p["rot"] + p["mean"]
