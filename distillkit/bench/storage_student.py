"""Does compact storage cost the student anything? The same student, seed and steps trained on the fp16 store and
on a copy transcoded to a compact option, both evaluated against the fp16 features.

Each student is evaluated with its own store's normalisation (what it was trained to predict) against the fp16
store's raw features: `loss` in its target space, `cos_patch` in the teacher's raw feature space (comparable as is).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from distillkit.bench.storage import _cls, _features, transcode
from distillkit.store.codecs import fit_codec
from distillkit.store.reader import ShardStream, StoreSource


def _evaluate(checkpoint: str, trained_on: str, reference: str) -> dict[str, dict[str, float]]:
    from distillkit.training.dune.evaluate import evaluate, load_dune_student
    from distillkit.training.dune.normalize import TargetNorm

    model, ck = load_dune_student(checkpoint)
    own, ref = StoreSource(trained_on), StoreSource(reference)
    cpu = torch.device("cpu")
    norm = TargetNorm({t: own for t in own.teachers}, cpu, ck["normalization"])
    stream = ShardStream([ref], batch_size=16, split="all", shuffle=False)
    has_cls = {t: p.has_cls for t, p in ref.provenance.items()}
    return evaluate(model, [(stream, ref.teachers)], norm, cpu, has_cls)


def student_gap(url: str, option: str, steps: int, seed: int = 0, batch_size: int = 8,
                student: dict | None = None) -> dict:
    from distillkit.training.dune.config import TrainConfig
    from distillkit.training.dune.trainer import train

    src = StoreSource(url)
    codecs = {}
    for t in src.teachers:
        x, split = _features(src, t)
        cls = _cls(src, t)
        train_rows = split == 0 if (split == 0).any() else np.ones_like(split, bool)
        codecs[t] = fit_codec(option, x[train_rows].reshape(-1, x.shape[-1]), cls[train_rows])
    with tempfile.TemporaryDirectory(prefix="distillkit-storage-student-") as tmp:
        compact = str(Path(tmp) / "compact.zarr")
        transcode(url, compact, {t: option for t in codecs}, codecs)
        out = {"option": option, "steps": steps, "seed": seed}
        for name, store in (("fp16", url), ("compact", compact)):
            cfg = TrainConfig(stores=[store], out_dir=str(Path(tmp) / name), max_steps=steps, seed=seed,
                              batch_size=batch_size, num_workers=0, eval_every=0,
                              student=student or {"preset": "vit_tiny"})
            res = train(cfg)
            ev = _evaluate(res["checkpoint"], store, url)
            out[name] = {t: {k: float(v) for k, v in m.items() if k != "samples"} for t, m in ev.items()}
        for t in src.teachers:
            a, b = out["fp16"][t], out["compact"][t]
            out.setdefault("loss_ratio", {})[t] = b["loss"] / a["loss"]
            out.setdefault("cos_patch_delta", {})[t] = b["cos_patch"] - a["cos_patch"]
    return out
