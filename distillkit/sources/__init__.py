"""Where images come from: folders, globs, fsspec URLs and manifest files; robust decoding."""

from distillkit.sources.decode import BadImage, load_rgb
from distillkit.sources.images import SampleRef, list_source, source_fingerprint

__all__ = ["BadImage", "SampleRef", "list_source", "load_rgb", "source_fingerprint"]
