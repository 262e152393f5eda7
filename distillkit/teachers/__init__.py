"""Teachers: registry, loaders (local path, fsspec URL, hub id) and the forward used for caching."""

from .base import Teacher, TeacherOutput
from .registry import load_teacher, resolve_device, teacher_input_hw, teacher_names

__all__ = ["Teacher", "TeacherOutput", "load_teacher", "resolve_device", "teacher_input_hw", "teacher_names"]
