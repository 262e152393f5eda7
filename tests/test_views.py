"""K replayable views: every cached target's input can be re-rendered exactly from the source image."""

from __future__ import annotations

import numpy as np
import torch
import zarr

from conftest import TINY_TEACHER, tiny_cache_config
from distillkit.cache import run_cache
from distillkit.config.cache import TeacherConfig
from distillkit.sources import load_rgb
from distillkit.store.reader import ShardStream, StoreSource, make_loader
from distillkit.teachers import load_teacher
from distillkit.sources.views import View, random_view, render


def test_random_views_replay_exactly(photos, tmp_path):
    store = tmp_path / "views.zarr"
    run_cache(tiny_cache_config(photos, store, views=3, view_mode="random", shard_size=6), show_progress=False)
    g = zarr.open_group(str(store), mode="r")
    ids = g["samples/id"][:].tolist()
    assert len(ids) == 36 and ids[0].endswith("#0") and ids[1].endswith("#1") and ids[2].endswith("#2")
    split = g["samples/split"][:]
    assert all(len(set(split[i:i + 3])) == 1 for i in range(0, 36, 3))  # all views of an image in one split
    views, seeds = g["samples/view"][:], g["samples/view_seed"][:]
    assert len({tuple(v) for v in views[:3]}) == 3  # three different crops of one image
    assert {bool(f) for f in views[:, 4]} == {True, False}  # flips happen
    teacher = load_teacher(TeacherConfig(**TINY_TEACHER), (56, 56), 14)
    uris = g["samples/uri"][:].tolist()
    batches = {i: b for b in make_loader(ShardStream([StoreSource(str(store))], 4, "all", shuffle=False), 0)
               for i in b["ids"]}
    for row in (0, 4, 17, 35):
        rgb = load_rgb(uris[row])
        x0, y0, x1, y1, flip = views[row]
        redrawn = random_view(rgb.shape[:2], (56, 56), int(seeds[row]))
        np.testing.assert_allclose([redrawn.x0, redrawn.y0, redrawn.x1, redrawn.y1, redrawn.flip],
                                   views[row], rtol=1e-6)  # the seed alone reproduces the view
        replay = render(rgb, View(float(x0), float(y0), float(x1), float(y1), bool(flip)), (56, 56))
        np.testing.assert_array_equal(replay, g["samples/image"][row])  # the view the teacher saw, bit for bit
        b = batches[ids[row]]
        j = b["ids"].index(ids[row])
        np.testing.assert_array_equal(b["samples/image"][j].numpy(), replay)  # ... and what the reader serves
        feats = teacher(torch.from_numpy(replay[None].copy())).patch[0].numpy()
        np.testing.assert_allclose(g["teachers/dinov2_vits14_reg/patch"][row].astype(np.float32), feats,
                                   atol=2e-2, rtol=1e-2)
