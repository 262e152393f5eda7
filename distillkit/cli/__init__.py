"""The `distillkit` command. One module per command group, each registering its verbs on the app of ``common``:

``cache`` (cache, teachers), ``stores`` (inspect, validate, show), ``train``, ``scenes`` (cache-scenes, align,
export-ply, synth-scenes), ``bench`` (bench loader | cache | align).
"""

from distillkit.cli import bench, cache, scenes, stores, train  # noqa: F401  (importing registers the commands)
from distillkit.cli.common import app

__all__ = ["app"]
