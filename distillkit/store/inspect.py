"""Summary (`distillkit inspect`) of a feature store (its validation: `distillkit.store.validation`).

Scene stores have theirs in `distillkit.scenes.check`; `distillkit.stores` picks one by the store's kind."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rich.table import Table

from distillkit_schemas import FEATURES, expected_arrays
from distillkit_schemas.validate import read_manifest, read_provenance

from distillkit.store.arrays import array_row, array_table
from distillkit.store.compact import storage_summary
from distillkit.store.summary import REJECTED_KEPT, read_summary


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
