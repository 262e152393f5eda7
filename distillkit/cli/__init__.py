"""The `distillkit` command. One module per command group, each registering its verbs on the app of ``common``:

``cache`` (cache, teachers), ``stores`` (inspect, validate, show), ``train``, ``scenes`` (cache-scenes, align,
export-ply, synth-scenes), ``bench`` (bench loader | cache | align).
"""

from distillkit.cli import bench, cache, reloc, scenes, stores, train  # noqa: F401  (importing registers the commands)
from distillkit.cli.common import app

# `--help` lists the verbs in this order (as before the CLI became a package), not in module import order
ORDER = ("cache", "inspect", "validate", "train", "show", "teachers", "cache-scenes", "align", "export-ply",
         "synth-scenes", "eval-reloc")
app.registered_commands.sort(key=lambda c: ORDER.index(c.name or c.callback.__name__)
                             if (c.name or c.callback.__name__) in ORDER else len(ORDER))

__all__ = ["app"]
