"""`distillkit bench validate`: `validate`'s read speed beside the disk's, on the same files, in one run.

Each round drops the store's files from the page cache (`sync`, then `posix_fadvise(DONTNEED)`, which needs no
root), reads the files a check reads once, sequentially in 1 MiB reads as `cat` does (the disk's sequential read
speed on exactly those files), drops them again and runs the check. Quick `validate` reads every object but those
of the arrays only `--deep` reads (images, uris, the statistics' per-shard partials, ...); `--deep` reads every
file. Rounds repeat (load on a shared machine drifts) and the report gives each round's ratio and the median:
`ratio` = the disk's time / the check's time, i.e. the fraction of the disk's sequential speed the check reaches
(issue 20's target: >= 0.70).
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

from distillkit.store.validation import COLUMNS, target_arrays

READ = 1 << 20


def bench_validate(store: str, rounds: int = 3, deep: bool = True, log=print) -> dict:
    """Per check (quick, and deep when asked): bytes read, seconds, MB/s of the check and of the disk, ratios."""
    from distillkit_schemas import validate_feature_structure

    from distillkit.store.integrity import deep_plan
    from distillkit.store.layout import open_group
    from distillkit.stores import validate_store

    root = Path(store)
    if "://" in store and not store.startswith("file://") or not root.is_dir():
        raise ValueError(f"bench validate: {store} is not a local store folder (the disk's speed is measured on "
                         "local files)")
    group = open_group(store, "r")
    manifest, provs, problems = validate_feature_structure(group)
    if manifest is None or problems:
        raise ValueError(f"bench validate: {store} is not a feature store"
                         + (f" ({problems[0].where}: {problems[0].what})" if problems else ""))
    every = sorted(p for p in root.rglob("*") if p.is_file())  # the store's objects, in path order
    # the quick check reads every object but those of the arrays only --deep reads (images, uris, partials, ...)
    quick = {*COLUMNS, "samples/split", *target_arrays(manifest)}
    skipped = [root / a for a in deep_plan(manifest, provs) if a not in quick]
    checks = {"validate": [p for p in every if not any(p.is_relative_to(a) and p.name != "zarr.json"
                                                           for a in skipped)]}
    checks |= {"validate_deep": every} if deep else {}
    out: dict = {"store": store, "rounds": rounds, "n_samples": manifest.n_samples, "shard_size": manifest.shard_size}
    for name, files in checks.items():
        size = sum(p.stat().st_size for p in files)
        disk, check, warm = [], [], []
        for r in range(rounds):
            disk.append(_cold(files, lambda: _cat(files)))
            warm.append(_timed(lambda: _cat(files)))  # the page cache's speed: shows whether dropping worked
            found = []
            check.append(_cold(files, lambda: found.extend(validate_store(store, deep=name.endswith("deep")))))
            if found:
                raise ValueError(f"bench validate: {store} is not valid ({found[0].where}: {found[0].what})")
            log(f"{name} round {r + 1}: disk {size / disk[-1] / 1e6:,.0f} MB/s, check {size / check[-1] / 1e6:,.0f} "
                f"MB/s, ratio {disk[-1] / check[-1]:.2f}")
        ratios = [d / c for d, c in zip(disk, check)]
        out[name] = {"files": len(files), "bytes": size, "check_s": check, "disk_s": disk,
                     "check_mb_s": size / statistics.median(check) / 1e6,
                     "disk_mb_s": size / statistics.median(disk) / 1e6,
                     "page_cache_mb_s": size / statistics.median(warm) / 1e6,
                     "ratio": ratios, "ratio_median": statistics.median(ratios)}
    return out


def _drop(files: list[Path]) -> None:
    """Out of the page cache: written pages first reach the disk (DONTNEED skips dirty ones)."""
    os.sync()
    for p in files:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _cat(files: list[Path]) -> int:
    n = 0
    for p in files:
        with open(p, "rb", buffering=0) as f:
            while chunk := f.read(READ):
                n += len(chunk)
    return n


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _cold(files: list[Path], fn) -> float:
    _drop(files)
    return _timed(fn)
