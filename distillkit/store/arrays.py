"""One row of `distillkit inspect`'s array table (both store kinds): shape, chunks, shards, codec, bytes."""

from __future__ import annotations

import numpy as np
import zarr


def codec_name(arr: zarr.Array) -> str:
    comps = [type(c).__name__.replace("Codec", "").lower() + (f"({c.cname})" if hasattr(c, "cname") else "")
             for c in (arr.compressors or ())]
    return "+".join(comps) or "none"


def array_row(group: zarr.Group, spec) -> dict:
    """The array at `spec.path` as a table row ({"path", "missing": True} when it is absent)."""
    try:
        arr = group[spec.path]
    except KeyError:
        return {"path": spec.path, "missing": True}
    raw = int(np.prod(arr.shape, dtype=np.int64)) * (arr.dtype.itemsize if arr.dtype.kind != "T" else 0)
    stored = int(arr.nbytes_stored())
    return {"path": spec.path, "shape": list(arr.shape), "dtype": str(arr.dtype), "chunks": list(arr.chunks),
            "shards": list(arr.shards) if arr.shards else None, "codec": codec_name(arr), "stored_bytes": stored,
            "raw_bytes": raw, "ratio": (raw / stored) if stored and raw else None}
