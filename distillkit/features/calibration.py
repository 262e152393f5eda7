"""Fit the storage codecs (int8, PCA) of a new store: the teachers run once over a calibration sample.

The sample is up to `calibration_samples` training images spread evenly over the sample table (a first pass over
a sample of the data, not a stream: the basis must exist before the first shard is encoded). Batches are fixed,
so every run fits the same codec; a run killed before the store is created simply fits it again.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from distillkit_schemas.storage import parse_storage

from distillkit.store.codecs import Codec, fit_codec

log = logging.getLogger("distillkit")


def calibration_rows(splits: np.ndarray, n: int) -> np.ndarray:
    train = np.flatnonzero(splits == 0)
    if len(train) == 0:
        train = np.arange(len(splits))
    if len(train) <= n:
        return train
    return train[np.linspace(0, len(train) - 1, n).round().astype(int)]


def fit_codecs(cfg, plan, teachers: dict, decode) -> dict[str, Codec]:
    """The codec of each teacher whose storage has fitted arrays (none for fp16). `decode(row)` gives a
    `DecodedSample` of a plan row."""
    storage = {t.name: t.storage for t in cfg.teachers}
    compact = [n for n in teachers if parse_storage(storage[n]).fitted]
    codecs: dict[str, Codec] = {}
    if not compact:
        return codecs
    rows = calibration_rows(plan.splits, cfg.calibration_samples)
    decoded = [d for d in (decode(int(r)) for r in rows) if d.ok]
    if not decoded:
        raise ValueError(f"no decodable training image among the {len(rows)} calibration samples of {cfg.source}: "
                         "cannot fit the compact storage")
    log.info("fitting %s storage on %d calibration images", ", ".join(f"{n}={storage[n]}" for n in compact),
             len(decoded))
    for name in compact:
        t = teachers[name]
        hw = tuple(t.input_hw)
        tokens, cls_tokens = [], []
        for i in range(0, len(decoded), cfg.batch_size):
            x = torch.from_numpy(np.stack([d.teacher_inputs[hw] for d in decoded[i:i + cfg.batch_size]]))
            y = t(x)
            patch = y.patch.cpu().numpy().astype(t.provenance.dtype)
            cls = y.stored_cls.cpu().numpy()
            tokens.append(patch.reshape(-1, patch.shape[-1]))
            cls_tokens.append(cls.astype(t.provenance.dtype))
        tokens, cls_tokens = np.concatenate(tokens), np.concatenate(cls_tokens)
        codecs[name] = fit_codec(storage[name], tokens[np.isfinite(tokens).all(axis=1)],
                                 cls_tokens[np.isfinite(cls_tokens).all(axis=1)])
        t.provenance.storage_sha256 = codecs[name].sha256()
    return codecs
