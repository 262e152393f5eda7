"""Student networks, apart from training (nothing here imports `distillkit.training`): ``dune/`` (the DUNE-style ViT
encoder with per-teacher projectors, and its StudentConfig), ``pointmap/`` (scene-specific pointmap students, one
family per module, and their config) and ``weights`` (partial weight loading)."""

__all__ = ["DuneStudent", "build_student"]


def __getattr__(name: str):  # lazy: the students' configs and the pointmap registry are read without torch
    if name in __all__:
        from distillkit.students.dune import network

        return getattr(network, name)
    raise AttributeError(name)
