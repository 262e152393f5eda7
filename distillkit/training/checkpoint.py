"""Student checkpoints: the one module that writes and reads every checkpoint distillkit makes.

A checkpoint is a `torch.save`d dict of plain data only: tensors, numbers, strings, None, lists, tuples and dicts
(model / optimiser / scheduler state, RNG state as a uint8 tensor, the data position, configs as
``model_dump(mode="json")``), with a format marker ``{"format": "distillkit-checkpoint/1", "kind": <task>}`` (the
kinds are the tasks of `distillkit.training.tasks`). It is read back with ``torch.load(weights_only=True)`` only, so
a checkpoint from S3 or a colleague cannot run code: a file that holds any other object is refused before anything
in it is built.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from distillkit.students.weights import load_matching
from distillkit.training.tasks import TASKS

log = logging.getLogger("distillkit")

FORMAT = "distillkit-checkpoint/1"
CKPT_NAME = "checkpoint-last.pt"  # both trainers: <out_dir>/checkpoint-last.pt


def plain(obj: Any, where: str = "checkpoint") -> Any:
    """`obj` as plain data `torch.load(weights_only=True)` reads back: numpy scalars -> Python numbers, numpy
    arrays -> lists, torch.Size -> tuple; tensors, containers and Python scalars as they are. Anything else is a
    TypeError naming where it sits (a trainer bug: it would make a checkpoint that cannot be loaded)."""
    import numpy as np

    if obj is None or type(obj) in (bool, int, float, str) or isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, dict):
        out = {k: plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
        return OrderedDict(out) if isinstance(obj, OrderedDict) else out
    if isinstance(obj, (list, tuple)):  # torch.Size and named tuples become tuples
        items = [plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}: a checkpoint holds only "
                    f"tensors, numbers, strings, lists and dicts")


def save_checkpoint(path: str | Path, kind: str, payload: dict) -> Path:
    """Write `payload` (plain data, see `plain`) with the format marker to `path`, atomically: a temporary file
    in the same folder, flushed to disk, then renamed over `path`, so a crash never leaves a half-written
    checkpoint."""
    if kind not in TASKS:
        raise ValueError(f"unknown checkpoint kind {kind!r} (one of {sorted(TASKS)})")
    if {"format", "kind"} & set(payload):
        raise ValueError("a checkpoint payload may not use the keys 'format' and 'kind' (the format marker)")
    path = Path(path)
    obj = {"format": FORMAT, "kind": kind, **plain(payload)}
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path, kind: str | None = None, map_location: Any = "cpu", mmap: bool = False) -> dict:
    """A checkpoint written by `save_checkpoint` (of `kind`, when given), read with ``weights_only=True``.

    ValueError naming the file when it does not exist, when it holds objects other than plain data (refused, never
    executed), when it is not a readable torch file, when it has no distillkit format marker, or when it is a
    checkpoint of another kind. `mmap`: tensors are read only when touched (to look at the configs alone)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint file")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e) or "Unsupported operand" in str(e):  # not a pickle at all
            found = re.search(r"Unsupported operand \d+", str(e))
            raise ValueError(f"{path}: not a readable torch checkpoint "
                             f"({found.group(0) if found else str(e).strip()[:200]})") from None
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        raise ValueError(
            f"{path}: refused: it holds objects other than tensors, numbers, strings, lists and dicts"
            f"{f' ({found.group(1)})' if found else ''}; a foreign checkpoint, or one written by an older "
            f"distillkit. Loading it could run code, so nothing in it was loaded.") from None
    except Exception as e:  # noqa: BLE001  (not a zip / pickle at all, truncated, empty)
        raise ValueError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from None
    legacy = _legacy_kind(ck) if isinstance(ck, dict) and "format" not in ck else None
    if legacy:  # written before the format marker, yet plain data (it passed weights_only): old runs keep working
        log.warning("%s: a checkpoint from before the format marker; read safely as a %s checkpoint", path,
                    _named(legacy))
        ck = {"format": FORMAT, "kind": legacy, **ck}
    if not isinstance(ck, dict) or not str(ck.get("format", "")).startswith("distillkit-checkpoint/"):
        raise ValueError(f"{path}: no distillkit checkpoint format marker: not a distillkit checkpoint, or one "
                         f"written by an older distillkit")
    if ck["format"] != FORMAT:
        raise ValueError(f"{path}: checkpoint format {ck['format']!r}; this distillkit reads {FORMAT!r}")
    if kind is not None and ck.get("kind") != kind:
        raise ValueError(f"{path} is a {_named(ck.get('kind'))} checkpoint, expected a {_named(kind)} one")
    return ck


def _named(kind: Any) -> str:
    return TASKS[kind].checkpoint_kind if kind in TASKS else repr(kind)


def _legacy_kind(ck: dict) -> str | None:
    """The kind of an unmarked checkpoint by the keys only its task's trainer wrote (None: not recognisably ours)."""
    return next((t.name for t in TASKS.values() if t.legacy_keys and set(t.legacy_keys) <= set(ck)), None)


def init_from(model: torch.nn.Module, path: str | Path, kind: str) -> int:
    """Fine-tuning / head-only start: copy into `model` every tensor of checkpoint `path` (of `kind`) whose name
    and shape match; the rest keep their initialisation. Logs how many; returns the number copied."""
    try:
        ck = load_checkpoint(path, kind)
    except ValueError as e:
        raise ValueError(f"init_from: {e}") from None
    state = ck.get("model")
    if not isinstance(state, dict):
        raise ValueError(f"init_from: {path}: the checkpoint has no model weights")
    n, skipped = load_matching(model, state)
    log.info("initialised %d/%d tensors from %s%s", n, n + len(skipped), path,
             f" (new: {', '.join(skipped[:5])}{'…' if len(skipped) > 5 else ''})" if skipped else "")
    return n
