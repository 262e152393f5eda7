"""`distillkit bench scale`: how each store operation's cost grows with the store's size N.

For each N, a `.jsonl` manifest of N unique ids over a few small generated images (every sample is decoded, but
the pictures repeat) is cached with a tiny random-init teacher, so the store's layout and object count are those of
N real samples at almost no compute. Timed per N, the teacher loaded once (start-up excluded):

* write_per_shard: caching from scratch, per shard (flat when a shard costs the same in an empty and a full store);
* noop_rerun: `cache` again over the same source;
* append_64: `cache` after 64 new ids (a fixed amount of new work: flat when an append costs what it adds);
* inspect (from the summary finalize writes) and inspect_exact (listing every object);
* validate (reads every feature: O(N) by design).

Each operation's exponent is the least-squares slope of log(seconds) on log(N); the 20.7 M column extrapolates the
largest N's time with it. Object reads (zarr chunk and metadata GETs of the local store) are counted too: on S3
each is a request.
"""

from __future__ import annotations

import json
import math
import resource
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

DUNE = 20_700_000
TEACHER = {"name": "dinov2_vits14", "overrides": {"depth": 1, "embed_dim": 16, "num_heads": 1}}
APPEND = 64
POOL = 16  # distinct pictures the manifest points at


def bench_scale(sizes: list[int], workdir: str | None = None, shard_size: int = 64, keep: bool = False,
                log=print) -> dict:
    """Build a store per size, time each operation, fit each operation's growth (see the module docstring)."""
    from distillkit.config.cache import CacheConfig
    from distillkit.features.pipeline import load_teachers

    sizes = sorted(set(sizes))
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="distillkit-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    pool = _pictures(root / "pool")
    teachers = None
    rows: dict[int, dict] = {}
    try:
        for n in sizes:
            manifest = root / f"m{n}.jsonl"
            _manifest(manifest, pool, n)
            store = root / f"s{n}.zarr"
            shutil.rmtree(store, ignore_errors=True)
            cfg = CacheConfig(source=str(manifest), store=str(store), teachers=[TEACHER], image_size=28,
                              student_patch=14, shard_size=shard_size, batch_size=64, num_workers=2, device="cpu",
                              val_fraction=0.01)
            teachers = teachers or load_teachers(cfg)
            rows[n] = _measure(cfg, manifest, pool, n, teachers)
            log(f"N={n}: " + ", ".join(f"{k} {v['s']:.3g} s ({v['reads']} reads)" for k, v in rows[n].items()
                                       if isinstance(v, dict)))
            if not keep:
                shutil.rmtree(store, ignore_errors=True)
    finally:
        if not keep and not workdir:
            shutil.rmtree(root, ignore_errors=True)
    return _fit(rows, shard_size)


def _measure(cfg, manifest: Path, pool: list[Path], n: int, teachers) -> dict:
    from distillkit.cache import run_cache
    from distillkit.stores import summarize, validate_store

    out: dict = {}
    shards = math.ceil(n / cfg.shard_size)
    with _timed(out, "cache_from_scratch"):
        run_cache(cfg, show_progress=False, teachers=teachers)
    out["write_per_shard"] = {"s": out["cache_from_scratch"]["s"] / shards,
                              "reads": out["cache_from_scratch"]["reads"] / shards}
    with _timed(out, "noop_rerun"):
        res = run_cache(cfg, show_progress=False, teachers=teachers)
    assert res["nothing_to_do"], f"re-run of {cfg.store} was not a no-op"
    _manifest(manifest, pool, n + APPEND)
    with _timed(out, f"append_{APPEND}"):
        res = run_cache(cfg, show_progress=False, teachers=teachers)
    assert res["shards"] == math.ceil(APPEND / cfg.shard_size), f"append cached {res['shards']} shards"
    with _timed(out, "inspect"):
        s = summarize(cfg.store)
    with _timed(out, "inspect_exact"):
        try:
            summarize(cfg.store, exact=True)
        except TypeError:  # a checkout before the summary (comparison runs): inspect always listed
            summarize(cfg.store)
    with _timed(out, "validate"):
        problems = validate_store(cfg.store)
    assert not problems, problems[:3]
    out["files"] = sum(1 for p in Path(cfg.store).rglob("*") if p.is_file())
    out["stored_bytes"] = sum(a.get("stored_bytes", 0) for a in s.arrays)
    out["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


@contextmanager
def _timed(out: dict, name: str):
    """Seconds and object reads (LocalStore.get: a request each on an object store) of the block."""
    from zarr.storage import LocalStore

    reads = [0]
    get = LocalStore.get

    async def counted(store, key, *a, **k):
        reads[0] += 1
        return await get(store, key, *a, **k)

    LocalStore.get = counted
    t0 = time.perf_counter()
    try:
        yield
    finally:
        LocalStore.get = get
        out[name] = {"s": time.perf_counter() - t0, "reads": reads[0]}


def _fit(rows: dict[int, dict], shard_size: int) -> dict:
    sizes = sorted(rows)
    names = [k for k, v in rows[sizes[0]].items() if isinstance(v, dict)]
    ops = {}
    for name in names:
        secs = [rows[n][name]["s"] for n in sizes]
        reads = [rows[n][name]["reads"] for n in sizes]
        exp = _slope(sizes, secs)
        read_exp = _slope(sizes, [max(r, 1) for r in reads])
        ops[name] = {"seconds": dict(zip(map(str, sizes), secs)), "reads": dict(zip(map(str, sizes), reads)),
                     "exponent": exp, "reads_exponent": read_exp,
                     "at_20_7M_s": secs[-1] * (DUNE / sizes[-1]) ** exp if exp is not None else None,
                     "reads_at_20_7M": reads[-1] * (DUNE / sizes[-1]) ** read_exp if read_exp is not None else None}
    per = {str(n): {k: rows[n][k] for k in ("files", "stored_bytes", "max_rss_mb")} for n in sizes}
    return {"bench": "scale", "sizes": sizes, "shard_size": shard_size, "teacher": TEACHER, "append": APPEND,
            "operations": ops, "stores": per}


def _slope(x: list[int], y: list[float]) -> float | None:
    """Least-squares slope of log(y) on log(x) (None for a single size)."""
    if len(x) < 2:
        return None
    lx, ly = np.log(np.asarray(x, float)), np.log(np.maximum(np.asarray(y, float), 1e-9))
    return float(np.polyfit(lx, ly, 1)[0])


def _pictures(folder: Path) -> list[Path]:
    """POOL small pictures (gradients and noise, half PNG, half JPEG): real files every sample decodes."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for k in range(POOL):
        path = folder / f"p{k:02d}.{'png' if k % 2 else 'jpg'}"
        if not path.exists():
            y, x = np.mgrid[0:32, 0:32]
            base = np.stack([x * 8, y * 8, (x + y) * 4], -1) + rng.integers(0, 40, (32, 32, 3))
            Image.fromarray(np.clip(base + 7 * k, 0, 255).astype(np.uint8)).save(path)
        out.append(path)
    return out


def _manifest(path: Path, pool: list[Path], n: int) -> None:
    """n unique ids over the pool's pictures, one JSON line each (written as a stream: no list of n rows)."""
    with open(path, "w") as f:
        for k in range(n):
            f.write(json.dumps({"id": f"img_{k:09d}", "uri": str(pool[k % len(pool)])}) + "\n")


def table(res: dict) -> str:
    """The markdown table of a result (README's benchmark section)."""
    sizes = res["sizes"]
    head = ["operation"] + [f"N={n:,}" for n in sizes] + ["exponent", "at 20.7 M", "reads at largest N",
                                                         "reads exponent"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, op in res["operations"].items():
        secs = [_fmt(op["seconds"][str(n)]) for n in sizes]
        exp = "-" if op["exponent"] is None else f"{op['exponent']:.2f}"
        rexp = "-" if op["reads_exponent"] is None else f"{op['reads_exponent']:.2f}"
        at = "-" if op["at_20_7M_s"] is None else _fmt(op["at_20_7M_s"])
        lines.append("| " + " | ".join([name, *secs, exp, at, f"{op['reads'][str(sizes[-1])]:,.0f}", rexp]) + " |")
    return "\n".join(lines)


def _fmt(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 60:
        return f"{s / 60:.1f} min"
    return f"{s:.3g} s" if s >= 0.01 else f"{s * 1000:.2g} ms"
