"""Name the damaged metadata document of a store, when zarr's own error would not.

zarr reports a truncated ``zarr.json`` as a bare JSON error ("Invalid control character at: line 1 column 37") and
an unknown codec without the array it belongs to. :func:`damaged_metadata` reads every node's ``zarr.json``
(groups and arrays, never chunk folders: one read per node and one listing per group, local or fsspec) and says
which ones do not parse or do not open, and why. It runs on the error path and in ``validate``, not on every open.
"""

from __future__ import annotations

import json
import os
import posixpath
from typing import Any

import fsspec
import zarr


NOT_A_STORE = "missing (not a Zarr v3 store)"


class DamagedMetadata(ValueError):
    """A store's metadata document cannot be read; the message names the file."""


def zarr_store(url: str, storage_options: dict[str, Any] | None = None, read_only: bool = True):
    """The zarr store of a local path or an fsspec URL. A local root is made absolute: zarr's LocalStore mis-joins
    some keys of a relative one (nbytes_stored of nested arrays)."""
    if "://" in url:
        return zarr.storage.FsspecStore.from_url(url, storage_options=storage_options or {}, read_only=read_only)
    return zarr.storage.LocalStore(os.path.abspath(url), read_only=read_only)


def damaged_metadata(url: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """``"<url>/<node>/zarr.json: <what is wrong>"`` for every node whose metadata is unreadable."""
    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    root = root.rstrip("/")
    store = zarr_store(url, storage_options)  # zarr itself parses each array's document (codecs, dtype, grid)
    found: list[str] = []
    pending = [""]
    while pending:
        node = pending.pop()
        doc = posixpath.join(root, node, "zarr.json") if node else posixpath.join(root, "zarr.json")
        name = f"{url.rstrip('/')}/{node + '/' if node else ''}zarr.json"
        try:
            meta = json.loads(fs.cat_file(doc))
            if not isinstance(meta, dict) or meta.get("node_type") not in ("group", "array"):
                raise ValueError("not a Zarr v3 group or array document")
            if meta["node_type"] == "array" and node:
                zarr.open_array(store=store, path=node, mode="r", zarr_format=3)
        except FileNotFoundError:
            if not node:
                found.append(f"{name}: {NOT_A_STORE}")
            continue
        except Exception as e:  # any reason the document does not open: say it, with the file
            found.append(f"{name}: {' '.join(str(e).split()) or type(e).__name__}")
            continue
        if meta["node_type"] == "group":
            for child in fs.ls(posixpath.join(root, node) if node else root, detail=True):
                if child["type"] == "directory":
                    pending.append(posixpath.join(node, posixpath.basename(child["name"].rstrip("/"))))
    return sorted(found)


def raise_if_damaged(url: str, storage_options: dict[str, Any] | None, error: BaseException) -> None:
    """After `error` while opening or reading `url`: raise DamagedMetadata naming the damaged file(s), if any."""
    found = [d for d in damaged_metadata(url, storage_options) if not d.endswith(NOT_A_STORE)]  # absent: no damage
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise DamagedMetadata(f"damaged store metadata: {found[0]}{more}") from error

