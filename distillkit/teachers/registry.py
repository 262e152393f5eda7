"""Teacher registry: names users type -> loaders. Teachers are loaded once per process and reused."""

from __future__ import annotations

import json
import threading

import fsspec

from distillkit.config.cache import TeacherConfig
from distillkit.devices import resolve_device
from distillkit.teachers import mast3r_enc, multihmr_enc
from distillkit.teachers.base import Teacher
from distillkit.teachers.dinov2 import SPECS as DINO_SPECS
from distillkit.teachers.dinov2 import DinoV2Teacher

_LOADED: dict[str, Teacher] = {}
_LOCK = threading.Lock()

# name -> (patch size, teacher class); every class takes
# (name, input_hw, checkpoint, seed, overrides, dtype, device, storage_options)
_TEACHERS: dict[str, tuple[int, type[Teacher]]] = {
    **{n: (spec.patch_size, DinoV2Teacher) for n, spec in DINO_SPECS.items()},
    mast3r_enc.NAME: (mast3r_enc.PATCH_SIZE, mast3r_enc.MASt3REncoderTeacher),
    multihmr_enc.NAME: (multihmr_enc.PATCH_SIZE, multihmr_enc.MultiHMREncoderTeacher),
}


def teacher_names() -> list[str]:
    return sorted(_TEACHERS)


def teacher_patch_size(name: str) -> int:
    if name in _TEACHERS:
        return _TEACHERS[name][0]
    raise ValueError(f"unknown teacher {name!r}; known teachers: {', '.join(teacher_names())}")


def teacher_input_hw(name: str, image_hw: tuple[int, int], student_patch: int,
                     grid: str = "student") -> tuple[int, int]:
    """Teacher input size (H, W), a multiple of the teacher's patch.

    grid="student": the student's token grid × teacher patch, so teacher tokens land on the student's grid (DUNE:
    resize by teacher/student patch). grid="own": the student input rounded to the nearest multiple of the teacher
    patch (half up, at least one patch): the teacher sees about the student's pixels on its own grid.
    """
    tp = teacher_patch_size(name)
    h, w = image_hw
    if grid == "own":
        return tuple(max(1, int(side / tp + 0.5)) * tp for side in (h, w))
    if grid != "student":
        raise ValueError(f"grid must be 'student' or 'own', got {grid!r}")
    gh, gw = h // student_patch, w // student_patch
    return (gh * tp, gw * tp)


def _file_identity(ref: str | None, storage_options: dict | None) -> str | None:
    """Cheap identity of a checkpoint file (size + mtime / ETag), so replaced weights are reloaded, not reused."""
    if not ref or ref.startswith("hf-hub:"):
        return ref
    try:
        fs, path = fsspec.core.url_to_fs(ref, **(storage_options or {}))
        return str(fs.ukey(path))
    except Exception:  # unreadable: the load itself reports it
        return None


def load_teacher(cfg: TeacherConfig, image_hw: tuple[int, int], student_patch: int, device: str = "auto",
                 storage_options: dict | None = None) -> Teacher:
    """Load (or reuse) a teacher. The cache key covers everything that changes its weights or input size."""
    input_hw = teacher_input_hw(cfg.name, image_hw, student_patch, cfg.grid)
    dev = resolve_device(device)
    key = json.dumps([cfg.model_dump(mode="json"), input_hw, str(dev), _file_identity(cfg.checkpoint, storage_options)],
                     sort_keys=True)
    with _LOCK:
        if key not in _LOADED:
            cls = _TEACHERS[cfg.name][1]
            _LOADED[key] = cls(cfg.name, input_hw, cfg.checkpoint, cfg.seed, cfg.overrides, cfg.dtype, dev,
                               storage_options)
        return _LOADED[key]
