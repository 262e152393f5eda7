"""A resumed run takes its settings from its checkpoint.

`distillkit train --out runs/s1 --epochs 24` on a folder that holds a checkpoint continues that run: every setting
the command line and the config file leave out comes from the checkpoint's own config, so nobody has to remember
the batch size or the student's depth. A setting that is given must match the checkpoint, except those a resume may
change (how long it runs, where it writes, how often it checkpoints or evaluates, on which device); a mismatch is
refused naming each flag, the value given and the checkpoint's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from distillkit.training.checkpoint import CKPT_NAME, load_checkpoint

# Settings a resumed run may change: they do not alter the model, the optimiser or the order of the data.
MAY_CHANGE = frozenset({
    "out_dir", "resume", "init_from", "epochs", "max_steps", "max_minutes", "device", "ckpt_every", "eval_every",
    "max_eval_samples", "log_batches", "storage_options", "verify_checksums", "decode_on", "scenes", "task",
})
# Config fields and the `distillkit train` flag that sets them, where the names differ.
FLAGS = {"stores": "--store", "store": "--store", "teachers": "--teacher", "scenes": "--scene",
         "student.num_heads": "--heads", "student.preset": "--preset", "student.depth": "--depth",
         "student.embed_dim": "--embed-dim"}


def run_checkpoint(out_dir: str | Path) -> Path | None:
    """The checkpoint a run into `out_dir` resumes from: ``<out_dir>/checkpoint-last.pt``, or for a task that
    trains one student per folder (pointmap scenes) the first ``<out_dir>/*/checkpoint-last.pt``; None if none."""
    out = Path(out_dir)
    if (out / CKPT_NAME).is_file():
        return out / CKPT_NAME
    return next(iter(sorted(out.glob(f"*/{CKPT_NAME}"))), None) if out.is_dir() else None


def settings_for_resume(kind: str, model: type[BaseModel], data: dict[str, Any], file: str | Path | None = None
                        ) -> dict[str, Any]:
    """`data` (a run's config mapping for `model`: what the config file and the command line gave) completed from
    the checkpoint it resumes, if it resumes one; unchanged for a fresh run. ValueError naming every given setting
    that differs from the checkpoint's (and may not change on resume)."""
    if data.get("resume") is False or not data.get("out_dir"):
        return data
    path = run_checkpoint(data["out_dir"])
    if path is None:
        return data
    saved = (load_checkpoint(path, kind, mmap=True).get("metrics") or {}).get("config")  # the weights stay unread
    if not isinstance(saved, dict):  # an older checkpoint: the run's own spec check still guards the resume
        return data
    fields = set(model.model_fields)
    kept = {k: v for k, v in saved.items() if k in fields and k not in MAY_CHANGE}
    merged = {**data, **{k: _completed(data.get(k), v) for k, v in kept.items()}}
    given = _canonical(model, merged)
    clashes = [d for k in kept if k in data for d in _differences(k, data[k], given.get(k, data[k]), kept[k])]
    if clashes:
        where = f" (command line or {file})" if file else ""
        raise ValueError(f"{path} continues a run with its own settings; given{where}: {'; '.join(clashes)}. "
                         f"Drop them to resume, or start a new run with --no-resume or another --out")
    return merged


def _canonical(model: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    """`data` as the model stores it (``24x32`` -> [24, 32], 1 -> 1.0), so a setting given in another spelling is
    not a difference; as given if it does not validate (the run's own validation names the error)."""
    try:
        return model.model_validate(data).model_dump(mode="json")
    except ValueError:  # pydantic's ValidationError
        return data


def _differences(key: str, raw: Any, given: Any, was: Any) -> list[str]:
    """The flags whose given value (`raw` as typed, `given` as the model stores it) differs from the checkpoint's."""
    if isinstance(raw, dict) and isinstance(given, dict) and isinstance(was, dict):  # e.g. --depth alone
        return [d for k, v in raw.items() for d in _differences(f"{key}.{k}", v, given.get(k, v), was.get(k))]
    if _same(given, was):
        return []
    return [f"{FLAGS.get(key, '--' + key.split('.')[-1].replace('_', '-'))} {_shown(raw)} (checkpoint: "
            f"{_shown(was)})"]


def _completed(given: Any, was: Any) -> Any:
    if isinstance(given, dict) and isinstance(was, dict):
        return {**was, **given}
    return was if given is None else given


def _same(given: Any, was: Any) -> bool:
    if isinstance(given, (list, tuple)) and isinstance(was, (list, tuple)):
        return len(given) == len(was) and all(_same(g, w) for g, w in zip(given, was))
    if isinstance(given, str) and isinstance(was, str) and given != was and "://" not in given + was:
        return Path(given).expanduser().resolve() == Path(was).expanduser().resolve()  # a store, written otherwise
    if isinstance(given, (int, float)) and isinstance(was, (int, float)) and not isinstance(given, bool):
        return float(given) == float(was)
    return given == was


def _shown(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v))
    return str(v)
