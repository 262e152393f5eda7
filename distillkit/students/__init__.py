"""Students: the DUNE-style ViT encoder with per-teacher projectors."""

from distillkit.students.dune import DuneStudent, build_student

__all__ = ["DuneStudent", "build_student"]
