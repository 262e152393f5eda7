"""Where images come from: folders, globs, fsspec URLs and manifest files; robust decoding."""

from distillkit.sources.decode import BadImage, load_rgb
from distillkit.sources.images import SampleRef, content_signatures, list_source, source_fingerprint

__all__ = ["BadImage", "SampleRef", "content_signatures", "list_source", "load_rgb", "source_fingerprint"]
