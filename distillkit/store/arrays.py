"""`distillkit inspect`'s array table (both store kinds): one row per array (shape, chunks, shards, codec, bytes)
and the rich table of the rows."""

from __future__ import annotations

from typing import Optional

import numpy as np
import zarr
from rich.table import Table


def codec_name(arr: zarr.Array) -> str:
    comps = [type(c).__name__.replace("Codec", "").lower()
             + (f"({getattr(c.cname, 'value', c.cname)})" if hasattr(c, "cname") else "")  # an enum before zarr 3.2
             for c in (arr.compressors or ())]
    return "+".join(comps) or "none"


def array_row(group: zarr.Group, spec, stored: int | None = None) -> dict:
    """The array at `spec.path` as a table row ({"path", "missing": True} when it is absent). `stored`: its
    stored bytes as the store's summary has them (else every object of the array is listed)."""
    try:
        arr = group[spec.path]
    except KeyError:
        return {"path": spec.path, "missing": True}
    raw = int(np.prod(arr.shape, dtype=np.int64)) * (arr.dtype.itemsize if arr.dtype.kind != "T" else 0)
    stored = int(arr.nbytes_stored()) if stored is None else stored
    return {"path": spec.path, "shape": list(arr.shape), "dtype": str(arr.dtype), "chunks": list(arr.chunks),
            "shards": list(arr.shards) if arr.shards else None, "codec": codec_name(arr), "stored_bytes": stored,
            "raw_bytes": raw, "ratio": (raw / stored) if stored and raw else None}


def human(n: Optional[float]) -> str:
    """Bytes in decimal units: 512 B, 1.5 KB, 2.0 GB."""
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return str(n)


def array_table(rows: list[dict], title: str = "arrays") -> Table:
    """The array table of `inspect` (rows from `distillkit.store.arrays.array_row`, either store kind)."""
    t = Table(title=title)
    for col in ("array", "shape", "dtype", "chunk", "shard", "codec", "stored", "raw", "ratio"):
        t.add_column(col, justify="right" if col in ("stored", "raw", "ratio") else "left")
    for a in rows:
        if a.get("missing"):
            t.add_row(a["path"], "[red]missing[/]", *[""] * 7)
            continue
        t.add_row(a["path"], str(tuple(a["shape"])), "str" if "String" in a["dtype"] else a["dtype"],
                  str(tuple(a["chunks"])), str(tuple(a["shards"])) if a["shards"] else "-", a["codec"],
                  human(a["stored_bytes"]), human(a["raw_bytes"]) if a["raw_bytes"] else "-",
                  f"{a['ratio']:.2f}" if a["ratio"] else "-")
    return t
