"""Storage codecs: how a teacher's patch tokens are stored. One module per kind, looked up by the name the schema
stores (`KINDS`), chained as the storage string says (`chain.Codec`).

The schema (`distillkit_schemas.storage`) owns the grammar and what each kind stores; a kind's module here owns
its maths: fit, encode, decode (numpy and torch alike). A codec is fitted once, before the store is created, on
the teacher's own output for a calibration sample of training images (evenly spread over the sample table, fixed
batches: the same fit on every run). It is stored beside the data (teachers/<t>/codec/) and kept for every append,
so old and new shards decode the same way.
"""

from __future__ import annotations

import importlib

import numpy as np
import zarr

from distillkit_schemas import paths
from distillkit_schemas.storage import KINDS as SCHEMA_KINDS
from distillkit_schemas.storage import Storage, parse_storage

from distillkit.store.codecs.chain import Codec, Target
from distillkit.store.codecs.stage import Stage

__all__ = ["KINDS", "Codec", "Target", "codec_from_arrays", "fit_codec", "read_codec"]


def _stage(kind: str) -> type[Stage]:
    """The implementation of a kind the grammar knows: the module named after it, its `STAGE` class."""
    try:
        return importlib.import_module(f"{__name__}.{kind}").STAGE
    except (ModuleNotFoundError, AttributeError) as e:
        raise ImportError(f"storage kind {kind!r} (storage_schemas/storage.py) has no implementation: add "
                          f"distillkit/store/codecs/{kind}.py with STAGE = its Stage class ({e})") from e


# a new kind is its grammar entry (storage_schemas/storage.py) and its module here: nothing else names kinds
KINDS: dict[str, type[Stage]] = {kind: _stage(kind) for kind in SCHEMA_KINDS}


def fit_codec(storage: str | Storage, tokens: np.ndarray, cls_tokens: np.ndarray | None = None) -> Codec:
    """tokens: [n, C] patch tokens as the teacher's dtype holds them; cls_tokens: [m, C] (the patch tokens stand
    in without them). Each stage is fitted on what the stages before it make of the tokens."""
    st = parse_storage(storage, tokens.shape[-1]) if isinstance(storage, str) else storage
    x = np.asarray(tokens, np.float64)
    cls_x = np.asarray(tokens if cls_tokens is None else cls_tokens, np.float64)
    stages: list[Stage] = []
    for kind in st.kinds:
        if stages:
            x = stages[-1].encode(x)
        stages.append(KINDS[kind.name].fit(kind, x, cls_x))
    return Codec(st, stages)


def read_codec(group: zarr.Group, teacher: str, storage: str) -> Codec:
    """The codec a store keeps for `teacher`, whose provenance says `storage`."""
    st = parse_storage(storage)
    return codec_from_arrays(st, {n: group[paths.codec(teacher, n)][:] for n in st.codec_arrays(1)})


def codec_from_arrays(storage: Storage, arrays: dict[str, np.ndarray]) -> Codec:
    return Codec(storage, [KINDS[k.name].from_arrays(k, arrays) for k in storage.kinds])
