"""WebDataset: tar shards of exactly one store shard each (`ShardWriter`, one `.npy` member per array), read with
`WebDataset` + `WebLoader`. WebDataset has no S3 client of its own: remote shards are streamed through `curl` from
presigned URLs (its http handler), without a local cache; shuffling is shard order plus a sample buffer. It has no
loader state to resume from (no `state`/`restore` here): an interrupted epoch starts over."""

from __future__ import annotations

import os
import tempfile

from distillkit.bench.peers.common import column, is_remote, list_keys, n_shards, rows_of, s3_client, split_s3, \
    upload_folder

NAME = "webdataset"


def write(src, out: str) -> dict:
    import webdataset as wds

    with tempfile.TemporaryDirectory(prefix="distillkit-wds-") as tmp:
        folder = tmp if is_remote(out) else out
        os.makedirs(folder, exist_ok=True)
        with wds.ShardWriter(os.path.join(folder, "shard-%06d.tar"), maxcount=src.manifest.shard_size,
                             verbose=0) as w:
            for shard in range(n_shards(src)):
                for s in rows_of(src.url, src.storage_options, shard):
                    # the key must not contain dots (ids are file names): key by row, the id is its own member
                    w.write({"__key__": f"r{s['row']:010d}", "id.txt": s["id"],
                             **{column(k) + ".npy": s[k] for k in src.array_names(True)}})
        if is_remote(out):
            upload_folder(folder, out)
    return {"format": "tar shards (.npy members)"}


def _urls(out: str) -> list[str]:
    if not is_remote(out):
        return sorted(os.path.join(out, n) for n in os.listdir(out) if n.endswith(".tar"))
    bucket, _ = split_s3(out)
    client = s3_client()
    return [client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": k}, ExpiresIn=3600)
            for k in list_keys(out) if k.endswith(".tar")]


def _sample(s: dict) -> dict:
    return {"id": s["id.txt"], **{k[:-4]: v for k, v in s.items() if k.endswith(".npy")}}


def loader(out: str, cache: str, batch_size: int, num_workers: int, seed: int, shuffle_block: int):
    import webdataset as wds
    from torch.utils.data import default_collate

    urls = _urls(out)
    ds = (wds.WebDataset(urls, shardshuffle=len(urls), seed=seed, workersplitter=wds.split_by_worker,
                         empty_check=False)
          .shuffle(shuffle_block, seed=seed).decode().map(_sample).batched(batch_size, collation_fn=default_collate))
    return wds.WebLoader(ds, batch_size=None, num_workers=num_workers)
