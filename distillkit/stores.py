"""`distillkit inspect` / `validate` for any store: its kind (feature store or scene store) picks the functions.

Each kind's own module knows only its kind (`distillkit.store.inspect`, `distillkit.scenes.check`); this table is
the one place that knows both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import zarr

from distillkit_schemas import FEATURES, SCENES, Problem, store_kind

from distillkit.scenes.check import deep_validate_scenes, render_scenes, summarize_scenes, validate_scenes
from distillkit.store.inspect import render_features, summarize_features
from distillkit.store.validation import Selection, deep_validate_features, validate_features
from distillkit.store.layout import open_group
from distillkit.store.metadata import damaged_metadata, raise_if_damaged


Progress = Callable[[int, int], None] | None


@dataclass(frozen=True)
class StoreKind:
    """Everything `inspect` and `validate` do with one kind of store. A new kind is its schema (storage_schemas/
    kinds.py) and one line here."""
    summarize: Callable[[zarr.Group, str], Any]  # (open group, url) -> summary with .kind and .as_dict()
    validate: Callable[[zarr.Group, Progress], list[Problem]]  # (open group, progress) -> problems
    deep_validate: Callable[[zarr.Group, Progress], tuple[list[Problem], list[Problem]]]  # -> (problems, notes)
    render: Callable[[Any], list]  # summary -> what `inspect` prints (rich renderables)


KINDS: dict[str, StoreKind] = {
    FEATURES: StoreKind(summarize_features, validate_features, deep_validate_features, render_features),
    SCENES: StoreKind(summarize_scenes, validate_scenes, deep_validate_scenes, render_scenes),
}


def render(summary) -> list:
    """What `distillkit inspect` prints for a summary of either kind."""
    return KINDS[summary.kind].render(summary)


def _open(url: str, storage_options: dict | None) -> zarr.Group:
    return open_group(url, "r", storage_options, consolidated=False)  # what is there, not a consolidated snapshot


def summarize(url: str, storage_options: dict | None = None, exact: bool = False):
    """The summary of a feature store or a scene store (`.kind` says which). `exact`: a feature store's sizes by
    listing every object, not from the summary its finalize wrote (scene summaries always list)."""
    try:
        group = _open(url, storage_options)  # opened once: the kind and the summary read the same metadata
        kind = store_kind(group)
        if exact and kind == FEATURES:
            return summarize_features(group, url, exact=True)
        return KINDS[kind].summarize(group, url)
    except Exception as e:
        raise_if_damaged(url, storage_options, e)
        raise


def validate_store(url: str, storage_options: dict | None = None,
                   progress: Callable[[int, int], None] | None = None, deep: bool = False,
                   notes: list[Problem] | None = None, select: Selection | None = None) -> list[Problem]:
    """Schema, completeness and content checks of either kind: every problem found (empty list = valid).

    `deep`: also read every byte of every per-sample and per-shard array, so that each checksum is verified, and
    name the array, shard (or object) and samples of any mismatch or missing object. Remarks that are no problem (e.g. a store
    written before checksums, which shards a `select`ion checked) are appended to `notes`. `select`: some of a
    feature store's shards (a range, a seeded sample); ValueError for a scene store."""
    damaged = damaged_metadata(url, storage_options)
    if damaged:  # nothing below could be trusted (or even opened)
        return [Problem(d.split(": ", 1)[0], d.split(": ", 1)[1]) for d in damaged]
    try:
        group = _open(url, storage_options)
    except Exception as e:
        return [Problem(url, f"cannot open as a Zarr v3 group: {e}")]
    kind = KINDS[store_kind(group)]
    if kind is KINDS[FEATURES]:
        return _validate_features(group, progress, deep, notes, select)
    if select is not None:
        raise ValueError(f"{url} is a scene store: --sample and --shards select shards of feature stores")
    if not deep:
        return kind.validate(group, progress)
    problems, found = kind.deep_validate(group, progress)
    if notes is not None:
        notes.extend(found)
    return problems


def _validate_features(group: zarr.Group, progress: Progress, deep: bool, notes: list[Problem] | None,
                       select: Selection | None) -> list[Problem]:
    if not deep:
        return validate_features(group, progress, select, notes)
    problems, found = deep_validate_features(group, progress, select)
    if notes is not None:
        notes.extend(found)
    return problems
