"""Student networks, apart from training (nothing here imports `distillkit.training`): ``dune`` (the DUNE-style ViT
encoder with per-teacher projectors, and its StudentConfig), ``pointmap/`` (scene-specific pointmap students, one
family per module, and their config) and ``weights`` (partial weight loading)."""

__all__ = ["DuneStudent", "build_student"]


def __getattr__(name: str):  # lazy: the pointmap registry and config are read (by the CLI too) without torch
    if name in __all__:
        from distillkit.students import dune

        return getattr(dune, name)
    raise AttributeError(name)
