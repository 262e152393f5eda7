"""`distillkit bench storage`: every storage option computed on a store's own fp16 features, side by side.

Per teacher and option: bytes per sample and the ratio to fp16, cosine (mean and 1st percentile over tokens) and
relative L2 error of what the reader decodes against the fp16 features, the int8 clip fraction, the PCA retained
variance (and the whole variance curve), and the training reader's samples/s on a copy of the store transcoded to
that option, against the fp16 store in the same run: decoding in the loader (`decode_on: cpu`) and handing the
codes to the trainer, which decodes on its device (`decode_on: device`, the default). Codecs are fitted on the
training split, as `cache` does.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from distillkit_schemas.storage import parse_storage
from distillkit_schemas.validate import read_manifest, read_provenance

from distillkit_schemas import paths

from distillkit.store import layout
from distillkit.store.codecs import Codec, fit_codec
from distillkit.store.codecs.pca import spectrum
from distillkit.store.reader import ShardStream, StoreSource
from distillkit.store.writer import ShardResult, write_shard

MAX_FIT_TOKENS = 200_000


def default_options(c: int) -> list[str]:
    return ["int8", f"pca:{c // 8}", f"pca:{c // 4}", f"pca:{c // 8}+int8", f"pca:{c // 4}+int8",
            f"pca:{c // 2}+int8"]


def _features(src: StoreSource, teacher: str) -> tuple[np.ndarray, np.ndarray]:
    """Patch features [rows, h, w, C] of the valid rows (as the reader decodes them) and their split."""
    n, s = len(src.ids), src.manifest.shard_size
    x = np.concatenate([src.read(paths.patch(teacher), i, min(i + s, n)) for i in range(0, n, s)])
    return x[src.valid], src.split[src.valid]


def _cls(src: StoreSource, teacher: str) -> np.ndarray:
    n, s = len(src.ids), src.manifest.shard_size
    return np.concatenate([src.read(paths.cls(teacher), i, min(i + s, n)) for i in range(0, n, s)])[src.valid]


def _quality(ref: np.ndarray, got: np.ndarray) -> dict:
    ref, got = ref.reshape(-1, ref.shape[-1]).astype(np.float64), got.reshape(-1, got.shape[-1]).astype(np.float64)
    cos = (ref * got).sum(1) / np.maximum(np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1), 1e-12)
    return {"cos_mean": float(cos.mean()), "cos_p01": float(np.percentile(cos, 1)),
            "rel_l2": float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-12))}


def variance_curve(eigenvalues: np.ndarray) -> dict[int, float]:
    total = float(eigenvalues.sum()) or 1.0
    cum = np.cumsum(eigenvalues) / total
    ks = sorted({2 ** i for i in range(int(np.log2(len(eigenvalues))) + 1)} | {len(eigenvalues)})
    return {k: float(cum[k - 1]) for k in ks}


def transcode(url: str, out: str, storage: dict[str, str], codecs: dict[str, Codec]) -> None:
    """A copy of a complete store with the patch tokens of each teacher stored as `storage[teacher]`."""
    g = layout.open_group(url, "r")
    m = read_manifest(g)
    provs = {t: read_provenance(g, t).model_copy(update={"storage": storage[t],
                                                          "storage_sha256": codecs[t].sha256()})
             for t in m.teachers}
    fresh = m.model_copy(update={"status": "in_progress", "n_valid": None, "n_rejected": None, "version": 0})
    extra = {paths.codec(t, k): v for t, c in codecs.items() for k, v in c.arrays().items()}
    out_g = layout.create_store(out, fresh, provs, g["samples/id"][:].tolist(), g["samples/uri"][:].tolist(),
                                g["samples/split"][:], view_seeds=g["samples/view_seed"][:], codec_arrays=extra)
    size = m.shard_size
    for s in range(m.n_shards):
        sl = slice(s * size, min((s + 1) * size, m.n_samples))
        valid = g["samples/valid"][sl]
        ok = valid.astype(bool)
        teachers = {t: codecs[t].encode_shard(g[paths.patch(t)][sl], g[paths.cls(t)][sl], ok, p.dtype)
                    for t, p in provs.items()}
        write_shard(out_g, ShardResult(shard=s, start=sl.start, stop=sl.stop, valid=valid,
                                       error=g["samples/error"][sl].tolist(), source_hw=g["samples/source_hw"][sl],
                                       view=g["samples/view"][sl], image=g["samples/image"][sl], teachers=teachers))
    from distillkit.cache import finalize_store

    finalize_store(out)


def _epoch_rate(src: StoreSource, batch_size: int, epoch: int) -> float:
    stream = ShardStream([src], batch_size=batch_size, split="all", shuffle=True)
    stream.set_epoch(epoch)
    n, t0 = 0, time.perf_counter()
    for b in stream:
        n += len(b["ids"])
    return n / (time.perf_counter() - t0)


def _paired_rates(fp16: str, compact: str, batch_size: int, epochs: int) -> tuple[float, float, float]:
    """(fp16, compact decoded in the loader, compact codes) samples/s: epochs interleaved, the best of each, so a
    busy machine slows all three alike."""
    arms = [StoreSource(fp16), StoreSource(compact), StoreSource(compact, on_device=True)]
    best = [0.0, 0.0, 0.0]
    for e in range(epochs):
        for i, src in enumerate(arms):
            best[i] = max(best[i], _epoch_rate(src, batch_size, e))
    return best[0], best[1], best[2]


def bench_storage(url: str, options: list[str] | None = None, batch_size: int = 32, epochs: int = 3,
                  reader: bool = True) -> dict:
    src = StoreSource(url)
    if any(p.storage != "fp16" for p in src.provenance.values()):
        raise ValueError(f"bench storage needs an fp16 store (the reference); {url} stores "
                         f"{ {t: p.storage for t, p in src.provenance.items()} }")
    out: dict = {"store": url, "n_valid": int(src.valid.sum()), "teachers": {}}
    tmp = Path(tempfile.mkdtemp(prefix="distillkit-bench-storage-"))
    try:
        rows: dict[str, dict] = {}
        per_option: dict[int, dict[str, tuple[str, Codec]]] = {}  # i-th option of every teacher: one transcode
        for t, p in src.provenance.items():
            x, split = _features(src, t)
            c = p.embed_dim
            train = x[split == 0] if (split == 0).any() else x
            fit_tokens = train.reshape(-1, c)
            if len(fit_tokens) > MAX_FIT_TOKENS:
                fit_tokens = fit_tokens[np.linspace(0, len(fit_tokens) - 1, MAX_FIT_TOKENS).astype(int)]
            cls_all = _cls(src, t)
            cls_fit = cls_all[split == 0] if (split == 0).any() else cls_all
            fp16_bytes = parse_storage("fp16").bytes_per_sample(p.grid_hw, c)
            curve = variance_curve(spectrum(fit_tokens)[0])
            rows[t] = {"embed_dim": c, "fp16_bytes_per_sample": fp16_bytes, "pca_variance_curve": curve,
                       "options": {}}
            for i, opt in enumerate(options or default_options(c)):
                codec = fit_codec(opt, fit_tokens, cls_fit)
                got = codec.decode(codec.encode(x, p.dtype), dtype=p.dtype)
                b = codec.storage.bytes_per_sample(p.grid_hw, c, p.dtype)
                rows[t]["options"][opt] = {"bytes_per_sample": b, "ratio_vs_fp16": b / fp16_bytes,
                                           **_quality(x, got), "clip_fraction": codec.clip_fraction(x),
                                           "retained_variance": codec.retained_variance()}
                per_option.setdefault(i, {})[t] = (opt, codec)
        if reader:
            for i, chosen in per_option.items():
                copy = str(tmp / f"{i}.zarr")
                transcode(url, copy, {t: o for t, (o, _) in chosen.items()}, {t: c for t, (_, c) in chosen.items()})
                fp16_rate, rate, codes = _paired_rates(url, copy, batch_size, epochs)
                for t, (opt, _) in chosen.items():
                    rows[t]["options"][opt].update(samples_per_s=rate, samples_per_s_fp16=fp16_rate,
                                                   reader_ratio_vs_fp16=rate / fp16_rate,
                                                   samples_per_s_codes=codes,
                                                   codes_reader_ratio_vs_fp16=codes / fp16_rate)
        out["teachers"] = rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
