"""Summary (`distillkit inspect`) and content validation (`distillkit validate`) of a feature store.

Scene stores have theirs in `distillkit.scenes.check`; `distillkit.stores` picks one by the store's kind."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from rich.table import Table

from distillkit_schemas import FEATURES, Problem, expected_arrays, paths, validate_feature_structure
from distillkit_schemas.validate import read_manifest, read_provenance

from distillkit.store.arrays import array_row, array_table
from distillkit.store.compact import storage_summary
from distillkit.store import sample_index
from distillkit.store.growth import is_padding, is_retired
from distillkit.store.summary import REJECTED_KEPT, read_summary
from distillkit.store.integrity import damage_problems, deep_check, missing_shards


@dataclass
class StoreSummary:
    url: str
    manifest: dict
    provenance: dict[str, dict]
    arrays: list[dict]
    shards_done: int
    n_shards: int
    rejected: list[dict] = field(default_factory=list)
    kind: str = FEATURES
    storage: dict[str, dict] = field(default_factory=dict)  # per teacher: bytes per sample, PCA variance
    source: str = "listing"  # where the sizes and rejected inputs come from: "summary" (finalize's) or a listing

    @property
    def completion(self) -> float:
        return 100.0 * self.shards_done / max(self.n_shards, 1)

    def as_dict(self) -> dict[str, Any]:
        return {"url": self.url, "kind": self.kind, "manifest": self.manifest, "provenance": self.provenance, "arrays": self.arrays,
                "shards_done": self.shards_done, "n_shards": self.n_shards, "completion_pct": self.completion,
                "rejected": self.rejected, "storage": self.storage, "source": self.source}


def summarize_features(group, url: str, exact: bool = False) -> StoreSummary:
    """The summary of an open feature store (`url` names it in the summary): from the summary finalize wrote for
    the served version (a few reads whatever the size), else, or with `exact`, by listing every object."""
    manifest = read_manifest(group)
    provs = {t: read_provenance(group, t) for t in manifest.teachers}
    stored = None if exact else read_summary(group)
    if stored is not None and stored.get("version") == manifest.version and manifest.status == "complete":
        sizes = stored["stored_bytes"]
        arrays = [array_row(group, spec, sizes.get(spec.path)) for spec in expected_arrays(manifest, provs)]
        return StoreSummary(url=url, manifest=manifest.model_dump(mode="json"),
                            provenance={t: p.model_dump(mode="json") for t, p in provs.items()}, arrays=arrays,
                            shards_done=manifest.n_shards, n_shards=manifest.n_shards, rejected=stored["rejected"],
                            storage={t: storage_summary(group, t, p) for t, p in provs.items()}, source="summary")
    arrays = [array_row(group, spec) for spec in expected_arrays(manifest, provs)]
    done = group["progress/shard_done"][:]
    valid = group["samples/valid"][:]
    rejected = []
    shard = manifest.shard_size
    bad_rows = [r for r in np.flatnonzero(valid == 0) if done[r // shard]]
    if bad_rows:
        ids, errs, uris = group["samples/id"][:], group["samples/error"], group["samples/uri"]
        for r in bad_rows:
            if str(ids[r]):  # padding rows of a grown store are no rejected inputs
                rejected.append({"id": str(ids[r]), "uri": str(uris[r]), "reason": str(errs[r])})
    return StoreSummary(url=url, manifest=manifest.model_dump(mode="json"),
                        provenance={t: p.model_dump(mode="json") for t, p in provs.items()}, arrays=arrays,
                        shards_done=int(done.sum()), n_shards=len(done), rejected=rejected,
                        storage={t: storage_summary(group, t, p) for t, p in provs.items()},
                        source="listing" if exact else "listing (no summary of this version: an older store, or "
                                                       "one not complete)")


def validate_features(group, progress: Callable[[int, int], None] | None = None) -> list[Problem]:
    """Schema, completeness and content checks of an open feature store: every problem found (empty = valid)."""
    manifest, provs, problems = validate_feature_structure(group)
    if manifest is None or problems:
        return problems
    done = group["progress/shard_done"][:]
    for s in np.flatnonzero(done == 0):
        problems.append(Problem(f"progress/shard_done[{s}]", "shard not written (run `distillkit cache` again)"))
    if manifest.status != "complete":
        problems.append(Problem("/", f"manifest status is {manifest.status!r}, not 'complete'"))
    ids = group["samples/id"][:]
    valid = group["samples/valid"][:]
    errors = group["samples/error"][:]
    padding = is_padding(ids)  # rows between the last old shard's end and an append's first shard
    named = ids[~padding & ~is_retired(errors)].tolist()  # a replaced file's id has a retired row and a live one
    if len(set(named)) != len(named):
        problems.append(Problem("samples/id", "sample ids are not unique"))
    for r in np.flatnonzero(padding & (valid != 0)):
        problems.append(Problem(f"samples/id[{r}]", "empty sample id on a valid sample"))
    n = manifest.n_samples
    done_shards = np.flatnonzero(done)
    gone = missing_shards(group, manifest, provs)
    problems += [d.problem(ids) for d in gone]
    gone_shards = {d.shard for d in gone}
    for k, s in enumerate(done_shards):
        if s in gone_shards:  # its rows read back as fill values: said once above, not once per sample
            if progress:
                progress(k + 1, len(done_shards))
            continue
        sl = slice(s * manifest.shard_size, min((s + 1) * manifest.shard_size, n))
        ok = valid[sl].astype(bool)
        for r in np.flatnonzero(~ok) + sl.start:
            if not str(errors[r]) and not padding[r]:
                problems.append(Problem(f"samples/error[{r}]", "sample marked invalid without a reason"))
        for t in manifest.teachers:
            for kind in ("patch", "cls"):
                path = paths.target(t, kind)
                try:
                    data = group[path][sl]
                except ValueError as e:  # a crc32c mismatch: `validate --deep` names the samples
                    problems.append(Problem(path, f"shard {s}: unreadable ({str(e).split('.')[0]})"))
                    continue
                flat = data.reshape(data.shape[0], -1)
                finite = np.isfinite(flat).all(axis=1)
                for r in np.flatnonzero(ok & ~finite) + sl.start:
                    problems.append(Problem(f"{path}[{r}]", f"NaN/Inf in a valid sample ({ids[r]})"))
                kept = is_retired(errors[sl])
                for r in np.flatnonzero(~ok & ~kept & ~np.isnan(flat).all(axis=1)) + sl.start:
                    problems.append(Problem(f"{path}[{r}]", "rejected sample holds data (expected NaN)"))
        if progress:
            progress(k + 1, len(done_shards))
    if manifest.status == "complete":
        for t in manifest.teachers:
            for name in ("patch_mean", "patch_std", "cls_mean", "cls_std"):
                path = paths.stats(t, name)
                try:
                    if not np.isfinite(group[path][:]).all():
                        problems.append(Problem(path, "statistics are not finite"))
                except ValueError as e:  # a checksum mismatch
                    problems.append(Problem(path, f"unreadable ({str(e).split('.')[0]}); `distillkit cache "
                                                  "--repair` recomputes the merged statistics"))
        problems += sample_index.check(group, manifest)
        if manifest.n_valid is not None and manifest.n_valid != int(valid.sum()):
            problems.append(Problem("/", f"manifest n_valid={manifest.n_valid} but samples/valid has "
                                         f"{int(valid.sum())}"))
    return problems


def render_features(s: StoreSummary) -> list:
    """What `distillkit inspect` prints for a feature store: rich renderables, in order."""
    out: list = []
    m = s.manifest
    out.append(f"[bold]{s.url}[/]  {m['schema_version']}  status [bold]{m['status']}[/]  "
               f"completion {s.completion:.0f}% ({s.shards_done}/{s.n_shards} shards)  version {m['version']}")
    out.append(f"samples {m['n_samples']} (valid {m['n_valid']}, rejected {m['n_rejected']}), shard size "
               f"{m['shard_size']}, student input {m['image_hw'][0]}x{m['image_hw'][1]} / patch "
               f"{m['student_patch']}, source {m['source']}")
    for name, pv in s.provenance.items():
        if pv["checkpoint_sha256"].startswith("random-init:"):
            out.append(f"[bold red]WARNING: teacher {name} was cached from RANDOM weights "
                       f"({pv['checkpoint_sha256']}); its features are not real targets[/]")
    out.append(array_table(s.arrays))
    out.append(f"sizes and rejected inputs from: {s.source}" + ("" if s.source != "summary" else
               f" (rejected inputs: the first {REJECTED_KEPT}; `inspect --exact` lists the store)"
               if len(s.rejected) >= REJECTED_KEPT else " (`inspect --exact` lists the store)"))
    p = Table(title="teachers")
    for col in ("teacher", "arch", "weights", "sha256", "input", "grid", "dim", "dtype", "storage",
                "bytes/sample", "vs fp16", "PCA variance"):
        p.add_column(col)
    for name, pv in s.provenance.items():
        random = pv["checkpoint_sha256"].startswith("random-init:")
        st = s.storage.get(name, {})
        var = st.get("retained_variance")
        p.add_row(name, pv["arch"], "[bold red]RANDOM INIT (" + pv["checkpoint_sha256"] + ")[/]" if random
                  else pv["checkpoint"], "-" if random else pv["checkpoint_sha256"][:16],
                  "x".join(map(str, pv["input_hw"])), "x".join(map(str, pv["grid_hw"])), str(pv["embed_dim"]),
                  pv["dtype"], pv.get("storage", "fp16"), f"{st.get('bytes_per_sample', 0):,}",
                  f"{st.get('ratio_vs_fp16', 1):.3f}x", "-" if var is None else f"{100 * var:.1f} %")
    out.append(p)
    if s.rejected:
        r = Table(title=f"rejected inputs ({len(s.rejected)})")
        r.add_column("id")
        r.add_column("reason")
        for row in s.rejected:
            r.add_row(row["id"], row["reason"])
        out.append(r)
    return out


def deep_validate_features(group, progress: Callable[[int, int], None] | None = None
                           ) -> tuple[list[Problem], list[Problem]]:
    """(problems, notes): every checksum verified (naming array, shard and samples), then the usual checks, each
    problem said once."""
    damage, notes = deep_check(group, progress)
    damaged = {(d.array, d.shard) for d in damage}
    usual = [p for p in validate_features(group, None)
             if not (p.what.startswith("shard ") and "unreadable" in p.what
                     and (p.where, int(p.what.split()[1].rstrip(":"))) in damaged)]
    found = damage_problems(group, damage)
    said = {(p.where, p.what) for p in found}
    return found + [p for p in usual if (p.where, p.what) not in said], notes
