"""`distillkit inspect` / `validate` for any store: its kind (feature store or scene store) picks the functions.

Each kind's own module knows only its kind (`distillkit.store.inspect`, `distillkit.scenes.check`); this table is
the one place that knows both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import zarr

from distillkit_schemas import FEATURES, SCENES, Problem, store_kind

from distillkit.scenes.check import deep_check_scenes, summarize_scenes, validate_scenes
from distillkit.store.inspect import summarize_features, validate_features
from distillkit.store.integrity import damage_problems, deep_check
from distillkit.store.layout import open_group
from distillkit.store.metadata import damaged_metadata, raise_if_damaged


@dataclass(frozen=True)
class StoreKind:
    summarize: Callable[[zarr.Group, str], Any]  # (open group, url) -> summary with .kind and .as_dict()
    validate: Callable[[zarr.Group, Callable[[int, int], None] | None], list[Problem]]  # (open group, progress)


KINDS: dict[str, StoreKind] = {
    FEATURES: StoreKind(summarize_features, validate_features),
    SCENES: StoreKind(summarize_scenes, validate_scenes),
}


def _open(url: str, storage_options: dict | None) -> zarr.Group:
    return open_group(url, "r", storage_options, consolidated=False)  # what is there, not a consolidated snapshot


def summarize(url: str, storage_options: dict | None = None):
    """The summary of a feature store or a scene store (`.kind` says which)."""
    try:
        group = _open(url, storage_options)  # opened once: the kind and the summary read the same metadata
        return KINDS[store_kind(group)].summarize(group, url)
    except Exception as e:
        raise_if_damaged(url, storage_options, e)
        raise


def validate_store(url: str, storage_options: dict | None = None,
                   progress: Callable[[int, int], None] | None = None, deep: bool = False,
                   notes: list[Problem] | None = None) -> list[Problem]:
    """Schema, completeness and content checks of either kind: every problem found (empty list = valid).

    `deep`: also read every byte of every per-sample and per-shard array, so that each checksum is verified, and
    name the array, shard and samples of any mismatch (feature stores). Remarks that are no problem (e.g. a store
    written before checksums) are appended to `notes`."""
    damaged = damaged_metadata(url, storage_options)
    if damaged:  # nothing below could be trusted (or even opened)
        return [Problem(d.split(": ", 1)[0], d.split(": ", 1)[1]) for d in damaged]
    try:
        group = _open(url, storage_options)
    except Exception as e:
        return [Problem(url, f"cannot open as a Zarr v3 group: {e}")]
    kind = store_kind(group)
    if not deep:
        return KINDS[kind].validate(group, progress)
    if kind != FEATURES:
        damaged, found = deep_check_scenes(group, progress)
        if notes is not None:
            notes.extend(found)
        unreadable = {p.where for p in damaged}
        try:
            usual = KINDS[kind].validate(group, None)
        except Exception:  # the usual checks read the same damaged objects: what is wrong is said above
            usual = [] if unreadable else None
            if usual is None:
                raise
        return damaged + [p for p in usual if p.where not in unreadable]
    damage, found = deep_check(group, progress)
    if notes is not None:
        notes.extend(found)
    damaged = {(d.array, d.shard) for d in damage}
    usual = [p for p in KINDS[kind].validate(group, None)
             if not (p.what.startswith("shard ") and "unreadable" in p.what
                     and (p.where, int(p.what.split()[1].rstrip(":"))) in damaged)]
    found = damage_problems(group, damage)
    said = {(p.where, p.what) for p in found}
    return found + [p for p in usual if (p.where, p.what) not in said]
