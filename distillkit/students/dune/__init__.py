"""The DUNE-style student: ``config`` (StudentConfig, torch-free) and ``network`` (the timm ViT with registers and
one projector per teacher). Importing the package reads only the config; the network's names load torch and timm
on first use."""

from distillkit.students.dune.config import StudentConfig

__all__ = ["StudentConfig", "DuneStudent", "build_student", "TransformerProjector", "MlpProjector",
           "LadderProjector"]


def __getattr__(name: str):  # lazy: config errors (`distillkit train`) come back without importing torch
    if name in __all__:
        from distillkit.students.dune import network

        return getattr(network, name)
    raise AttributeError(name)
