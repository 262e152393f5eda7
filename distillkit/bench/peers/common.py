"""What every peer format shares: a store's samples in row order, column names, one batch layout, byte counts."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch

from distillkit.store.reader import StoreSource


def column(name: str) -> str:
    """An array name as a column / tar-member name ('/' would be a path inside a tar)."""
    return name.replace("/", "__")


def is_remote(url: str) -> bool:
    return "://" in url


def rows_of(url: str, storage_options: dict | None, shard: int) -> Iterator[dict[str, Any]]:
    """The valid samples of one shard, in row order: {"row", "id", <array name>: ndarray}.

    Opens the store itself, so that it can run in a peer's writer process (async S3 clients do not survive fork)."""
    src = StoreSource(url, None, storage_options)
    size = src.manifest.shard_size
    start, stop = shard * size, min((shard + 1) * size, len(src.ids))
    data = {n: src.read(n, start, stop) for n in src.array_names(True)}
    for r in range(start, stop):
        if src.valid[r]:
            yield {"row": r, "id": str(src.ids[r]), **{n: np.ascontiguousarray(a[r - start]) for n, a in data.items()}}


def n_shards(src: StoreSource) -> int:
    return -(-len(src.ids) // src.manifest.shard_size)


def tensor_bytes(batch: dict[str, Any]) -> int:
    """Bytes of the sample tensors of a batch (the same count for every loader: not ids, rows or positions)."""
    return sum(v.numel() * v.element_size() for k, v in batch.items()
               if isinstance(v, torch.Tensor) and k not in ("rows", "worker", "index"))


def s3_client():
    """boto3 against the endpoint s3fs/botocore would use (AWS_ENDPOINT_URL, as with moto or MinIO)."""
    import boto3

    return boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)


def split_s3(url: str) -> tuple[str, str]:
    bucket, _, key = url.split("://", 1)[1].partition("/")
    return bucket, key.rstrip("/")


def upload_folder(folder: str, url: str) -> None:
    bucket, prefix = split_s3(url)
    client = s3_client()
    for name in sorted(os.listdir(folder)):
        client.upload_file(os.path.join(folder, name), bucket, f"{prefix}/{name}")


def list_keys(url: str) -> list[str]:
    bucket, prefix = split_s3(url)
    pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    return sorted(o["Key"] for p in pages for o in p.get("Contents", []))


def delete_prefix(url: str) -> None:
    bucket, _ = split_s3(url)
    client = s3_client()
    keys = list_keys(url)
    for i in range(0, len(keys), 1000):
        client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]]})


@contextmanager
def environ(**values: str):
    """Environment variables set for the duration (a peer's settings, undone afterwards)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

