"""Where images come from: folders, globs, fsspec URLs and manifest files (listed into columns); robust decoding."""

from distillkit.sources.decode import BadImage, load_rgb
from distillkit.sources.images import content_signatures, list_source
from distillkit.sources.listing import Listing, SampleRef

__all__ = ["BadImage", "Listing", "SampleRef", "content_signatures", "list_source", "load_rgb"]
