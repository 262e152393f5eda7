"""distillkit: run vision teachers once, cache their outputs in Zarr v3, stream them into students."""

__version__ = "0.1.0"
