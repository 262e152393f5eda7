"""DUSt3R scenes: dataset readers, pairwise inference (encoder once per image), global alignment, scene stores.

Modules: ``sources`` (12-Scenes / 7-Scenes / image folders), ``frames`` (network input + GT on its pixels),
``synthetic`` (synthetic rooms: pair predictions, SceneData, scenes written in the dataset layouts), ``data``
(a scene's arrays for pointmap students), ``refs`` (scenes by
JSON reference), ``inference`` (batched pair inference,
GT oracle), ``store`` (scene store I/O), ``quality`` (residuals, GT errors), ``pipeline`` (plan / run / re-align),
``export`` (PLY point clouds, PNG views), ``check`` (inspect/validate of scene stores).
"""

__all__ = ["finalize", "prepare", "realign", "run_scene", "run_scenes"]


def __getattr__(name: str):  # lazy: `distillkit inspect/validate` use store/check without torch or the aligner
    if name in __all__:
        from distillkit.scenes import pipeline

        return getattr(pipeline, name)
    raise AttributeError(name)
