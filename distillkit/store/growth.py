"""Stores that grow: a re-run over a source that gained images appends them as new shards.

The served version is what the root manifest says. An append never touches it until the very end:

1. the intent (`distillkit_append`: from/to sample counts, the new source fingerprint) is written to the root;
2. every array grows (metadata only) and the new rows of the sample table are written. New samples start at the
   next shard boundary, so the last old shard is never rewritten; the rows in between are *padding* (empty id,
   never valid);
3. the new shards are cached like any shard (data first, completion mark last);
4. finalize merges the statistics and writes the new manifest (version + 1) and clears the intent in one update.

Each step is idempotent, so a run killed at any moment is finished by the next run with the same bytes. Readers
clip every array to the manifest's `n_samples`: while an append runs they keep serving the old version.
Old samples keep their rows, ids and splits. Samples whose file left the source are reported and kept, or with
`prune` marked invalid (their features stay on disk but are never served).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import zarr

from distillkit_schemas import Manifest, TeacherProvenance, expected_arrays, paths

from distillkit.store.codecs import read_codec
from distillkit.store.ids import sorted_matches, str_column
from distillkit.store.writer import write_partials

log = logging.getLogger("distillkit")

APPEND_ATTR = "distillkit_append"
PRUNED = "pruned: no longer in the source"
REPLACED = "replaced: the file changed since it was cached; its new content is a later row"
RETIRED = (PRUNED, REPLACED)  # reasons of rows that were valid once: their features stay on disk, never served


@dataclass
class Changes:
    added: list[int] = field(default_factory=list)  # indices into the new plan
    removed: list[str] = field(default_factory=list)  # ids in the store that left the source
    moved: int = 0  # ids whose uri changed (e.g. the source folder moved): kept as they are
    changed: list[str] = field(default_factory=list)  # ids whose file was replaced in place: re-cached
    replaced_rows: list[int] = field(default_factory=list)  # their old rows, retired

    def as_dict(self) -> dict[str, Any]:
        return {"added": len(self.added) - len(self.changed), "removed": self.removed, "moved": self.moved,
                "changed": self.changed}


def diff(old_ids: np.ndarray, old_uris: np.ndarray, new_ids: list[str], new_uris: list[str],
         old_signatures: np.ndarray | None = None, new_signatures: list[str] | None = None,
         old_live: np.ndarray | None = None) -> Changes:
    """What a re-run finds. With signatures (what each file was when cached), a sample whose file now has another
    one was replaced in place: its plan index joins `added` (cached again, a rejected file too: it may be fixed)
    and its live row (`old_live`: not padding, not retired) is retired."""
    old = {str(i): str(u) for i, u in zip(old_ids.tolist(), old_uris.tolist()) if str(i)}
    now = set(new_ids)
    ch = Changes(added=[k for k, i in enumerate(new_ids) if i not in old],
                 removed=sorted(i for i in old if i not in now))
    ch.moved = sum(1 for i, u in zip(new_ids, new_uris) if i in old and old[i] != u)
    if old_signatures is not None and new_signatures is not None:
        row_of = {str(i): r for r, i in enumerate(old_ids.tolist()) if old_live[r]}
        for k, (i, sig) in enumerate(zip(new_ids, new_signatures)):
            r = row_of.get(i)
            if r is not None and sig and str(old_signatures[r]) and str(old_signatures[r]) != sig:
                ch.added.append(k)
                ch.changed.append(i)
                ch.replaced_rows.append(r)
        ch.added.sort()
    return ch


def diff_from_index(group: zarr.Group, have: Manifest, listing) -> Changes | None:
    """`diff` of a listing without repeated ids (`sources.Listing`: ids, uris and signatures as columns) against
    the served version's sample index: its ids and per-row digests (a few large objects, not one object per shard
    and column), matched in numpy by one sort, not through a dict and a set of every id. Only rows whose digest
    differs from the listing's (a moved or replaced file) are read from samples/. None: no index with digests (an
    older store): diff the full columns."""
    from distillkit.store import sample_index

    if have.sample_index is None:
        return None
    try:
        index = sample_index.read_columns(group, have.sample_index, have.n_samples, digests=True)
    except (KeyError, ValueError):
        return None
    if sample_index.DIGEST not in index:
        return None
    old_ids, old_rows = latest_rows(str_column(index["id"]))
    io, ks = sorted_matches(old_ids, listing.ids)  # listing row ks[j] is the store's id io[j]
    known, kept = np.zeros(len(listing), bool), np.zeros(len(old_ids), bool)
    known[ks], kept[io] = True, True
    ch = Changes(added=np.flatnonzero(~known).tolist(), removed=old_ids[~kept].tolist())
    sigs = listing.signatures if have.signatures else [""] * len(listing)
    new_digest = sample_index.entry_digests(listing.ids, listing.uris, sigs)
    rows = old_rows[io]
    differ = index[sample_index.DIGEST][rows] != new_digest[ks]
    suspects = list(zip(ks[differ].tolist(), rows[differ].tolist()))
    old = _rows(group, [r for _, r in suspects], ["uri", "error"] + (["signature"] if have.signatures else []))
    for k, r in suspects:
        new = listing[k]
        if old["uri"][r] != new.uri:
            ch.moved += 1
        if have.signatures and new.signature and old["signature"][r] and old["signature"][r] != new.signature \
                and not str(old["error"][r]).startswith(RETIRED):
            ch.added.append(k)
            ch.changed.append(new.id)
            ch.replaced_rows.append(r)
    ch.added.sort()
    return ch


def latest_rows(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct non-empty ids of an index, sorted, and each one's latest row (a replaced file's id has two)."""
    order = np.argsort(ids, kind="stable")
    s = ids[order]
    last = np.ones(len(s), bool)
    last[:-1] = s[1:] != s[:-1]
    last &= s != ""  # padding rows
    return s[last], order[last]


def _rows(group: zarr.Group, rows: list[int], columns: list[str]) -> dict[str, dict[int, str]]:
    """Single rows of samples/ columns, one read per (column, run of consecutive rows)."""
    out: dict[str, dict[int, str]] = {c: {} for c in columns}
    rows = sorted(set(rows))
    runs: list[list[int]] = []
    for r in rows:
        if runs and r == runs[-1][-1] + 1:
            runs[-1].append(r)
        else:
            runs.append([r])
    for c in columns:
        arr = group[f"samples/{c}"]
        for run in runs:
            for r, v in zip(run, arr[run[0]:run[-1] + 1].tolist()):
                out[c][r] = str(v)
    return out


def padded_start(manifest: Manifest) -> int:
    """Where the next appended sample goes: the first row of the first shard after the store's last one."""
    return manifest.n_shards * manifest.shard_size


def pending_intent(group: zarr.Group) -> dict | None:
    return group.attrs.get(APPEND_ATTR)


def is_padding(ids: np.ndarray) -> np.ndarray:
    return np.array([not str(i) for i in ids.tolist()], dtype=bool)


def is_retired(errors: np.ndarray) -> np.ndarray:
    """Rows pruned or replaced: valid once, their features stay on disk but are never served again."""
    return np.array([str(e).startswith(RETIRED) for e in errors.tolist()], dtype=bool)


def begin(group: zarr.Group, have: Manifest, provs: dict[str, TeacherProvenance], fingerprint: str,
          ids: Sequence[str], uris: Sequence[str], splits: np.ndarray, seeds: np.ndarray,
          prune_rows: list[int] | None = None, signatures: Sequence[str] | None = None,
          replaced_rows: list[int] | None = None) -> Manifest:
    """Steps 1-2 (idempotent): the manifest the new version will have (written to the root only by finalize)."""
    start = padded_start(have)
    n1 = start + len(ids) if len(ids) else have.n_samples
    target = {"from_samples": have.n_samples, "to_samples": n1, "source_fingerprint": fingerprint,
              "base_version": have.version, "pruned": len(prune_rows or []), "replaced": len(replaced_rows or [])}
    new = have.model_copy(update={"n_samples": n1, "source_fingerprint": fingerprint, "status": "in_progress"})
    intent = pending_intent(group)
    if intent == {**target, "ready": True}:
        return new
    restart = intent is not None and {k: v for k, v in intent.items() if k != "ready"} != target
    group.attrs[APPEND_ATTR] = {**target, "ready": False}
    for spec in expected_arrays(new, provs):
        arr = group[spec.path]
        if spec.shape and tuple(arr.shape) != spec.shape:
            arr.resize(spec.shape)  # growing rewrites the array's metadata only
    if restart:  # an interrupted append of another listing: its new shards are not served; redo them all
        log.warning("an interrupted append (%s) is replaced by this one", intent)
        group["progress/shard_done"][have.n_shards:] = 0
    if len(ids):
        sl = slice(start, n1)
        group["samples/id"][sl] = str_column(ids)
        group["samples/uri"][sl] = str_column(uris)
        group["samples/split"][sl] = splits.astype(np.uint8)
        group["samples/view_seed"][sl] = seeds.astype(np.int64)
        if have.signatures:
            group["samples/signature"][sl] = str_column([""] * len(ids) if signatures is None else signatures)
    if prune_rows:
        prune(group, have, provs, prune_rows)
    if replaced_rows:
        prune(group, have, provs, replaced_rows, REPLACED)
    group.attrs[APPEND_ATTR] = {**target, "ready": True}
    return new


def prune(group: zarr.Group, manifest: Manifest, provs: dict[str, TeacherProvenance], rows: list[int],
          reason: str = PRUNED) -> None:
    """Mark rows invalid (`reason`) and recompute their shards' statistics partials from the stored features."""
    size = manifest.shard_size
    valid, error = group["samples/valid"], group["samples/error"]
    for s in sorted({r // size for r in rows}):
        sl = slice(s * size, min((s + 1) * size, manifest.n_samples))
        v = valid[sl]
        e = error[sl]
        for r in rows:
            if sl.start <= r < sl.stop:
                v[r - sl.start], e[r - sl.start] = 0, reason
        valid[sl], error[sl] = v, e
        ok = v.astype(bool)
        for name, p in provs.items():
            codec = read_codec(group, name, p.storage)
            write_partials(group, paths.teacher(name), s, ok, codec.readback(group[paths.patch(name)][sl],
                                                                             group[paths.cls(name)][sl], p.dtype))
