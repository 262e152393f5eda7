"""mosaicml-streaming: written with `MDSWriter` (shards sized to hold exactly one store shard), read with
`StreamingDataset` + `StreamingDataLoader`. On S3 it downloads whole shards into its `local` dir (boto3,
S3_ENDPOINT_URL) and reads them from there; locally (remote=None) it reads the shard files in place."""

from __future__ import annotations

import os

import numpy as np

from distillkit.bench.peers.common import column, is_remote, n_shards, rows_of

NAME = "mds"


def _encoding(a: np.ndarray) -> str:
    return f"ndarray:{a.dtype.name}:{','.join(map(str, a.shape))}"  # fixed dtype+shape: raw bytes, no header


def write(src, out: str) -> dict:
    from streaming import MDSWriter

    samples = (s for shard in range(n_shards(src)) for s in rows_of(src.url, src.storage_options, shard))
    first = next(samples)
    columns = {"id": "str", "row": "int64", **{column(k): _encoding(first[k]) for k in src.array_names(True)}}
    # an MDS shard is header (count + one offset per sample + 1) then samples; its size_limit is in bytes
    longest_id = max(len(str(i).encode()) for i in src.ids)
    per_sample = sum(first[k].nbytes for k in src.array_names(True)) + 8 + 4 * len(columns) + longest_id + 4
    size_limit = 8 + src.manifest.shard_size * per_sample
    with MDSWriter(columns=columns, out=out, size_limit=size_limit, exist_ok=True) as w:
        for s in (first, *samples):
            w.write({"id": s["id"], "row": s["row"], **{column(k): s[k] for k in src.array_names(True)}})
    return {"format": "MDS shards (.mds + index.json)"}


def loader(out: str, cache: str, batch_size: int, num_workers: int, seed: int, shuffle_block: int):
    from streaming import StreamingDataLoader, StreamingDataset

    if is_remote(out) and os.environ.get("AWS_ENDPOINT_URL"):  # MDS's boto3 client reads its own variable
        os.environ.setdefault("S3_ENDPOINT_URL", os.environ["AWS_ENDPOINT_URL"])
    ds = StreamingDataset(remote=out if is_remote(out) else None, local=cache if is_remote(out) else out,
                          shuffle=True, shuffle_seed=seed, shuffle_block_size=shuffle_block, batch_size=batch_size,
                          num_canonical_nodes=1)
    return StreamingDataLoader(ds, batch_size=batch_size, num_workers=num_workers)


def state(loader) -> dict:
    return loader.state_dict()


def restore(loader, saved: dict) -> None:
    loader.load_state_dict(saved)
