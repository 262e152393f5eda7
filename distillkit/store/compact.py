"""What `distillkit inspect` shows of a teacher's storage (the codecs themselves: `store/codecs/`)."""

from __future__ import annotations

import zarr

from distillkit_schemas.storage import parse_storage

from distillkit.store.codecs import read_codec


def storage_summary(group: zarr.Group, teacher: str, prov) -> dict:
    """The storage, its bytes per sample, the ratio to fp16 (the default), the variance a projection keeps."""
    got = parse_storage(prov.storage).bytes_per_sample(prov.grid_hw, prov.embed_dim, prov.dtype)
    fp16 = parse_storage("fp16").bytes_per_sample(prov.grid_hw, prov.embed_dim, "float16")
    return {"storage": prov.storage, "bytes_per_sample": got, "ratio_vs_fp16": got / fp16,
            "retained_variance": read_codec(group, teacher, prov.storage).retained_variance(),
            "storage_sha256": prov.storage_sha256}
