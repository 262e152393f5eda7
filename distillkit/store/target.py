"""What is at a store path before a command writes there: a command writes only into a store it created or recognises.

Zarr's ``mode="w"`` deletes everything under the path first. Before any write, the path is inspected read-only
(one listing and at most one ``zarr.json`` read, local or fsspec) and classified:

- ``new``: nothing there, or an empty folder: the store may be created;
- ``interrupted``: a store of this kind whose creation was killed: it may be created again from scratch;
- ``existing``: a complete store of this kind: open it and check that it matches.

Anything else (a file, a folder of the user's, a Zarr group distillkit did not create, a store of the other kind, a
damaged ``zarr.json``) raises :class:`NotAStore`, naming the path and what is there, and nothing is written.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any, Literal

import fsspec

from distillkit_schemas import CREATING_ATTR, MANIFEST_ATTR, SCHEMA_KINDS

State = Literal["new", "interrupted", "existing"]
VERBS = {"features": "`distillkit cache`", "scenes": "`distillkit cache-scenes`"}


class NotAStore(ValueError):
    """The target path holds something that is not a store of the kind this command writes."""


def _fs(url: str, storage_options: dict[str, Any] | None):
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return fs, path.rstrip("/") or path


def _what_is_there(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(repr(n) for n in sorted(names)[:limit])
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"{shown}{more}"


def _kind_of(attrs: dict) -> str | None:
    manifest = attrs.get(MANIFEST_ATTR)
    if isinstance(manifest, dict):
        return SCHEMA_KINDS.get(manifest.get("schema_version"), "unknown")
    return None


def inspect_target(url: str, kind: str, storage_options: dict[str, Any] | None = None) -> State:
    """Classify what is at `url` for a command that writes stores of `kind` (``features`` or ``scenes``)."""
    fs, path = _fs(url, storage_options)
    fix = "give a new or empty folder as the store"
    if fs.isfile(path):
        raise NotAStore(f"{url} is a file, not a store folder; {fix}")
    try:
        names = [posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False)]
    except (FileNotFoundError, NotADirectoryError):
        names = []
    if not names:
        return "new"
    if "zarr.json" not in names:
        raise NotAStore(f"{url} is a folder that is not a distillkit store (it holds {_what_is_there(names)}); "
                        f"refusing to write into it: {fix}")
    try:
        meta = json.loads(fs.cat_file(posixpath.join(path, "zarr.json")))
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as e:
        raise NotAStore(f"{url}/zarr.json is damaged ({e}); refusing to write into {url}") from e
    if meta.get("zarr_format") != 3 or meta.get("node_type") != "group":
        raise NotAStore(f"{url} holds a Zarr {meta.get('node_type', 'node')} (zarr_format "
                        f"{meta.get('zarr_format')!r}), not a distillkit store; refusing to write into it: {fix}")
    attrs = meta.get("attributes") or {}
    have = _kind_of(attrs)
    if have == kind:
        return "existing"
    if have is not None:
        verb = VERBS.get(have)
        raise NotAStore(f"{url} is a {have} store" + (f" (written by {verb})" if verb else "")
                        + f", not a {kind} store; this command writes only {kind} stores: give another store path")
    creating = attrs.get(CREATING_ATTR)
    if creating is True or creating == kind:  # True: a store of either kind from before the kind was recorded
        return "interrupted"
    if isinstance(creating, str):
        raise NotAStore(f"{url} is a {creating} store whose creation was interrupted, not a {kind} store; this "
                        f"command writes only {kind} stores: give another store path")
    raise NotAStore(f"{url} is a Zarr group that distillkit did not create; refusing to write into it: {fix}")
