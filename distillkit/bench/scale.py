"""`distillkit bench scale`: how each store operation's cost grows with the store's size N.

For each N, a `.jsonl` manifest of N unique ids over a few small generated images (every sample is decoded, but
the pictures repeat) is cached with a tiny random-init teacher, so the store's layout and object count are those of
N real samples at almost no compute. Timed per N, the teacher loaded once (start-up excluded):

* write_per_shard: caching from scratch, per shard (flat when a shard costs the same in an empty and a full store);
* noop_rerun: `cache` again over the same source;
* append_64: `cache` after 64 new ids (a fixed amount of new work: flat when an append costs what it adds);
* append_1pct: `cache` after N/100 new ids (at least one shard), DUNE's nightly append, in a child process that
  reports its peak RSS (`peak_rss_mb`; `workers_peak_rss_mb` its largest loader worker's) next to the seconds and
  reads; the no-op re-run is repeated in a child too, for its peak RSS (issue 20's target at 1 M: both under 60 s
  and 2 GB);
* train_first_step: `distillkit.training.dune.trainer.train` in a child (a tiny student, batch 8, no loader workers,
  one step, on the store): seconds from the call to the first optimiser step, imports excluded (`total_s`: the whole
  run, the final evaluation and checkpoint included), the RSS growth over the run and to the first step;
* inspect (from the summary finalize writes) and inspect_exact (listing every object);
* validate (reads every feature: O(N) by design), with `disk_ratio`: the fraction of the disk's sequential read
  speed it reaches on the same files (`distillkit bench validate`, one round). These stores' objects are tiny (a
  16-wide teacher on 2x2 patches), so per-object costs dominate it; `bench validate` on a store of real-size
  features measures the streaming speed.

Child processes load the teacher before the clock starts (start-up excluded); `base_rss_mb` is their RSS then.

With `s3=True` (`--s3`), each store is then copied into a local S3 API server (moto, 127.0.0.1) and the no-op
re-run and a 1 % append are run on the copy in a child: `s3_noop_rerun` and `s3_append_1pct`, whose `reads` are the
HTTP requests the server logged (`requests_by_method` splits them).

Each operation's exponent is the least-squares slope of log(seconds) on log(N); the 20.7 M column extrapolates the
largest N's time with it. Object reads (zarr chunk and metadata GETs of the local store) are counted too: on S3
each is a request.
"""

from __future__ import annotations

import json
import math
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from distillkit.bench.local_s3 import LocalS3Server

DUNE = 20_700_000
TEACHER = {"name": "dinov2_vits14", "overrides": {"depth": 1, "embed_dim": 16, "num_heads": 1}}
APPEND = 64
POOL = 16  # distinct pictures the manifest points at
CHILD_KEYS = ("reads", "peak_rss_mb", "base_rss_mb", "rss_growth_mb", "workers_peak_rss_mb")
STUDENT = {"preset": "custom", "embed_dim": 32, "depth": 1, "num_heads": 1}
FIGURE_KEYS = ("peak_rss_mb", "base_rss_mb", "rss_growth_mb", "workers_peak_rss_mb", "first_step_rss_growth_mb",
               "total_s", "added", "requests_by_method", "disk_ratio")


def bench_scale(sizes: list[int], workdir: str | None = None, shard_size: int = 64, keep: bool = False,
                log=print, s3: bool = False) -> dict:
    """Build a store per size, time each operation, fit each operation's growth (see the module docstring)."""
    from distillkit.config.cache import CacheConfig
    from distillkit.features.pipeline import load_teachers

    sizes = sorted(set(sizes))
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="distillkit-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    pool = _pictures(root / "pool")
    teachers = None
    rows: dict[int, dict] = {}
    server = LocalS3Server(root / "moto.log", "bench-key-id", "bench-secret") if s3 else None
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
            if server:
                rows[n].update(_measure_s3(server, cfg, manifest, pool, n + APPEND + rows[n]["append_1pct"]["added"],
                                           rows[n]["append_1pct"]["added"]))
            log(f"N={n}: " + ", ".join(f"{k} {v['s']:.3g} s ({v['reads']} reads)" for k, v in rows[n].items()
                                       if isinstance(v, dict)))
            if not keep:
                shutil.rmtree(store, ignore_errors=True)
                shutil.rmtree(root / f"train{n}", ignore_errors=True)
    finally:
        if server:
            server.close()
        if not keep and not workdir:
            shutil.rmtree(root, ignore_errors=True)
    return _fit(rows, shard_size)


def _measure(cfg, manifest: Path, pool: list[Path], n: int, teachers) -> dict:
    from distillkit.bench.validate import bench_validate
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
    child = _child({"op": "cache", "cfg": cfg.model_dump(mode="json")})  # a no-op again, for its peak RSS
    assert child["nothing_to_do"], f"re-run of {cfg.store} in a child was not a no-op"
    out["noop_rerun"].update({k: child[k] for k in CHILD_KEYS if k != "reads"})
    added = max(n // 100, cfg.shard_size)
    _manifest(manifest, pool, n + APPEND + added)
    child = _child({"op": "cache", "cfg": cfg.model_dump(mode="json")})
    assert child["samples"] == added, f"the 1 % append cached {child['samples']} samples, not {added}"
    out["append_1pct"] = {"s": child["s"]} | {k: child[k] for k in CHILD_KEYS}
    out["append_1pct"]["added"] = added
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
    # its read speed against the disk's on the same files, page cache dropped (one round of `bench validate`)
    out["validate"]["disk_ratio"] = bench_validate(str(cfg.store), rounds=1, deep=False,
                                                   log=lambda _: None)["validate"]["ratio_median"]
    students = Path(cfg.store).parent / f"train{n}"
    shutil.rmtree(students, ignore_errors=True)  # a fresh run, not a resumed one
    out["train_first_step"] = _child({"op": "train", "cfg": {
        "stores": [str(cfg.store)], "out_dir": str(students), "student": STUDENT,
        "batch_size": 8, "num_workers": 0, "max_steps": 1, "device": "cpu"}})
    out["files"] = sum(1 for p in Path(cfg.store).rglob("*") if p.is_file())
    out["stored_bytes"] = sum(a.get("stored_bytes", 0) for a in s.arrays)
    out["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _measure_s3(server: LocalS3Server, cfg, manifest: Path, pool: list[Path], n: int, added: int) -> dict:
    """The store (n samples, its manifest's) copied to the S3 server: the no-op re-run and a 1 % append there, each
    in a child, with the requests the server saw."""
    url = f"s3://scale/{Path(cfg.store).name}"
    server.filesystem().makedirs("scale", exist_ok=True)
    server.filesystem().put(str(cfg.store), url, recursive=True)
    s3cfg = cfg.model_copy(update={"store": url})
    out = {}
    for name, total in (("s3_noop_rerun", n), ("s3_append_1pct", n + added)):
        _manifest(manifest, pool, total)
        before = server.requests()
        child = _child({"op": "cache", "cfg": s3cfg.model_dump(mode="json")}, env=server.env)
        after = server.requests()
        by = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}
        assert child["nothing_to_do"] == (total == n), f"{name}: {child}"
        out[name] = {"s": child["s"], "reads": sum(by.values()), "requests_by_method": by,
                     **{k: child[k] for k in CHILD_KEYS if k != "reads"}}
    server.filesystem().rm(url, recursive=True)
    return out


def _child(spec: dict, env: dict | None = None) -> dict:
    """Run one operation in a fresh Python process (`_child_main`): its result, with its peak RSS in MB."""
    import os

    proc = subprocess.run([sys.executable, "-c", "from distillkit.bench.scale import _child_main; _child_main()"],
                          input=json.dumps(spec), capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(f"bench scale child ({spec['op']}) failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _child_main() -> None:
    """A child's side: the spec on stdin; start-up (imports, the teacher) before the clock; one JSON line out."""
    import psutil

    spec = json.loads(sys.stdin.read())
    out: dict = {}
    if spec["op"] == "cache":
        from distillkit.config.cache import CacheConfig
        from distillkit.features.pipeline import load_teachers, run_cache

        cfg = CacheConfig(**spec["cfg"])
        teachers = load_teachers(cfg)
        base = psutil.Process().memory_info().rss
        with _timed(out, "op"):
            res = run_cache(cfg, show_progress=False, teachers=teachers)
        out = out["op"] | {k: res[k] for k in ("nothing_to_do", "shards", "samples")}
    else:  # train: the first optimiser step of the DUNE trainer, then its final evaluation and checkpoint
        from distillkit.training.dune.config import TrainConfig
        from distillkit.training.dune.trainer import train

        cfg = TrainConfig(**spec["cfg"])
        base = psutil.Process().memory_info().rss
        first: dict = {}
        t0 = time.perf_counter()

        def on_step(step, total, record):
            if not first:
                first.update(s=time.perf_counter() - t0, rss=psutil.Process().memory_info().rss)

        with _timed(out, "op"):
            train(cfg, on_step=on_step)
        out = {"s": first["s"], "reads": out["op"]["reads"], "total_s": out["op"]["s"],
               "first_step_rss_growth_mb": (first["rss"] - base) / 2**20}
    out["base_rss_mb"] = base / 2**20
    out["peak_rss_mb"] = _peak_rss_mb()
    out["rss_growth_mb"] = out["peak_rss_mb"] - out["base_rss_mb"]
    # its largest loader worker (ru_maxrss: a forked worker's count starts at this process's RSS at the fork)
    out["workers_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps(out))


def _peak_rss_mb() -> float:
    """This process's own peak RSS: VmHWM, the high-water mark of its address space since exec (ru_maxrss of a
    process started by fork + exec also holds the forking parent's RSS, here the whole bench's)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 2**20)


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
        for key in FIGURE_KEYS:  # figures beside seconds and reads: memory, whole-run time, requests, disk ratio
            if all(key in rows[n][name] for n in sizes):
                vals = [rows[n][name][key] for n in sizes]
                ops[name][key] = dict(zip(map(str, sizes), vals))
                if key in ("peak_rss_mb", "rss_growth_mb"):
                    ops[name][key.replace("_mb", "_exponent")] = _slope(sizes, [max(v, 1.0) for v in vals])
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
                                                         "reads exponent", "peak RSS per N (growth)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, op in res["operations"].items():
        secs = [_fmt(op["seconds"][str(n)]) for n in sizes]
        exp = "-" if op["exponent"] is None else f"{op['exponent']:.2f}"
        rexp = "-" if op["reads_exponent"] is None else f"{op['reads_exponent']:.2f}"
        at = "-" if op["at_20_7M_s"] is None else _fmt(op["at_20_7M_s"])
        rss = "-"
        if "peak_rss_mb" in op:
            rss = " / ".join(f"{op['peak_rss_mb'][str(n)]:,.0f} MB ({op['rss_growth_mb'][str(n)]:+,.0f})"
                             for n in sizes)
        lines.append("| " + " | ".join([name, *secs, exp, at, f"{op['reads'][str(sizes[-1])]:,.0f}", rexp, rss])
                     + " |")
    return "\n".join(lines)


def _fmt(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 60:
        return f"{s / 60:.1f} min"
    return f"{s:.3g} s" if s >= 0.01 else f"{s * 1000:.2g} ms"
