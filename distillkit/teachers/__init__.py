"""Teachers: registry, loaders (local path, fsspec URL, hub id) and the forward used for caching."""

from distillkit.devices import resolve_device  # re-exported: callers from before `distillkit.devices` existed
from distillkit.teachers.base import Teacher, TeacherOutput
from distillkit.teachers.registry import load_teacher, teacher_input_hw, teacher_names

__all__ = ["Teacher", "TeacherOutput", "load_teacher", "resolve_device", "teacher_input_hw", "teacher_names"]
