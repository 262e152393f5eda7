"""LitData: written with `litdata.optimize` (chunks of exactly one store shard), read with `StreamingDataset` +
`StreamingDataLoader`. On S3 it downloads whole chunks into its cache dir (boto3 / obstore, AWS_ENDPOINT_URL) and
reads them from there; locally it reads the chunk files in place.

LitData 0.2.76 sends S3 transfers through obstore when it is installed, and builds obstore's client without
`allow_http`, so a plain-http endpoint (moto, a MinIO without TLS) fails with "BadScheme". For such an endpoint
its own boto3 path is used instead (`_plain_http`); with https endpoints nothing is changed."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from functools import partial

from distillkit.bench.peers.common import column, environ, is_remote, n_shards, rows_of

NAME = "litdata"


@contextmanager
def _plain_http():
    from litdata.streaming import downloader

    old = downloader._OBSTORE_AVAILABLE
    if os.environ.get("AWS_ENDPOINT_URL", "").startswith("http://"):
        downloader._OBSTORE_AVAILABLE = False  # forked workers inherit it
    try:
        yield
    finally:
        downloader._OBSTORE_AVAILABLE = old


def _items(url: str, storage_options: dict | None, shard: int):
    for s in rows_of(url, storage_options, shard):
        yield {"id": s.pop("id"), "row": s.pop("row"), **{column(k): v for k, v in s.items()}}


def write(src, out: str) -> dict:
    import litdata

    # optimize stages chunks in a global /tmp/chunks by default (and leaves them there): give it its own
    with tempfile.TemporaryDirectory(prefix="distillkit-litdata-") as tmp, \
            environ(DATA_OPTIMIZER_CACHE_FOLDER=os.path.join(tmp, "chunks"),
                    DATA_OPTIMIZER_DATA_CACHE_FOLDER=os.path.join(tmp, "data")), _plain_http():
        # fork: spawn would re-import torch in the writer process; the function opens the store itself
        litdata.optimize(fn=partial(_items, src.url, src.storage_options), inputs=list(range(n_shards(src))),
                         output_dir=out, chunk_size=src.manifest.shard_size, num_workers=1, mode="overwrite",
                         verbose=False, reorder_files=False, start_method="fork")
    return {"format": "litdata chunks (.bin + index.json)"}


class _Loader:
    """StreamingDataLoader iterated with the settings LitData needs on a plain-http endpoint."""

    def __init__(self, loader):
        self.loader = loader

    def __iter__(self):
        with _plain_http():
            yield from self.loader


def loader(out: str, cache: str, batch_size: int, num_workers: int, seed: int, shuffle_block: int):
    import litdata
    from litdata.streaming.resolver import Dir

    # the chunk-level shuffle is litdata's own; items are shuffled within the chunks a worker holds
    with _plain_http():
        ds = litdata.StreamingDataset(Dir(path=cache, url=out) if is_remote(out) else out, shuffle=True, seed=seed,
                                      drop_last=False)
        return _Loader(litdata.StreamingDataLoader(ds, batch_size=batch_size, num_workers=num_workers))


def state(loader: _Loader) -> dict:
    return loader.loader.state_dict()


def restore(loader: _Loader, saved: dict) -> None:
    loader.loader.load_state_dict(saved)
