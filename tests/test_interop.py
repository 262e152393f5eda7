"""Readers we did not write: every array of a feature store and of a scene store that distillkit created opens in
tensorstore (zarr3 driver) and in plain zarr-python with the values distillkit's readers return; xarray sees the
named dimensions; both kinds carry consolidated metadata.

Torch-free when torch is missing: `make test` also runs this file under the newest zarr (see the Makefile), where
the comparison with the torch-based StoreSource is skipped and the feature store is finalized the same way
(`stats.merge` + consolidation) without distillkit.cache."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

from distillkit_schemas import MANIFEST_ATTR, Manifest, TeacherProvenance
from distillkit_schemas.scenes import NetworkProvenance, SceneInfo, SceneManifest, expected_scene_arrays

from distillkit.scenes import store as scene_store
from distillkit.store import layout
from distillkit.store.direct import DirectShardReader
from distillkit.store.writer import ShardResult, TeacherShard, write_shard

N, SHARD, HW, GRID, DIM = 10, 4, (28, 28), (2, 2), 8


def _finalize(url: str) -> None:
    try:
        from distillkit.cache import finalize_store  # the real one, where torch is installed
    except ImportError:
        finalize_store = None
    if finalize_store is not None:
        assert finalize_store(url)["status"] == "complete"
        return
    from distillkit.store import stats

    g = zarr.open_group(url, mode="r+", use_consolidated=False)
    base = "teachers/t/stats"
    for k in ("patch", "cls"):
        n, mean, m2 = stats.merge([(int(c), m, v) for c, m, v in zip(g[f"{base}/shard_count"][:],
                                                                    g[f"{base}/shard_{k}_mean"][:],
                                                                    g[f"{base}/shard_{k}_m2"][:])])
        g[f"{base}/{k}_mean"][:], g[f"{base}/{k}_std"][:] = mean, stats.std_from(n, m2)
    g[f"{base}/count"][...] = n
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(g.store)


def write_feature_store(path: Path, codec: str, n_samples: int = N, shard_size: int = SHARD,
                        write: bool = True) -> Path:
    """A complete feature store through distillkit's own creation, shard writer and finalize (`write=False`: the
    arrays only, as created, marked complete: for metadata request counts)."""
    N, SHARD = n_samples, shard_size
    manifest = Manifest(source="synthetic", source_fingerprint="0" * 64, n_samples=N, shard_size=SHARD, image_hw=HW,
                        student_patch=14, val_fraction=0.25, teachers=["t"])
    prov = TeacherProvenance(name="t", family="dinov2", arch="vit_test", checkpoint="random-init:0",
                             checkpoint_sha256="random-init:0", input_hw=HW, patch_size=14, grid_hw=GRID,
                             embed_dim=DIM, mean=(0.5,) * 3, std=(0.5,) * 3, output="cls+patch", resize="center")
    ids = [f"img{i:02d}.png" for i in range(N)]
    group = layout.create_store(str(path), manifest, {"t": prov}, ids, [f"file:///data/{i}" for i in ids],
                                np.array([i % 4 == 0 for i in range(N)], np.uint8), codec=codec)
    if not write:
        group.attrs[MANIFEST_ATTR] = {**group.attrs[MANIFEST_ATTR], "status": "complete"}
        scene_store.consolidate(group)
        return path
    rng = np.random.default_rng(1)
    for s in range(-(-N // SHARD)):
        a, b = s * SHARD, min((s + 1) * SHARD, N)
        n = b - a
        valid = np.ones(n, np.uint8)
        valid[0] = s != 1  # one rejected sample: NaN features
        patch = rng.standard_normal((n, *GRID, DIM)).astype(np.float16)
        cls = rng.standard_normal((n, DIM)).astype(np.float16)
        patch[valid == 0], cls[valid == 0] = np.nan, np.nan
        write_shard(group, ShardResult(
            shard=s, start=a, stop=b, valid=valid, error=["" if v else "bad image" for v in valid],
            source_hw=rng.integers(20, 900, (n, 2), dtype=np.int32), view=rng.random((n, 5), np.float32),
            image=rng.integers(0, 256, (n, *HW, 3), dtype=np.uint8), teachers={"t": TeacherShard(patch, cls)}))
    _finalize(str(path))
    return path


def write_scene_store(path: Path, n_frames: int = 6, frames_per_shard: int = 4,
                      fill: bool = True) -> tuple[Path, str]:
    """A scene store created by distillkit (its arrays, codecs, shards), every array then filled, consolidated."""
    n = n_frames
    edges = np.array([(i, (i + d) % n) for i in range(n) for d in (1, 2)], np.int32)
    info = SceneInfo(name="office", layout="folder", root="/data/office", n_frames=n, n_edges=len(edges),
                     image_hw=(16, 24), has_gt=True, has_gt_depth=True)
    manifest = SceneManifest(source="/data", source_fingerprint="0" * 64, layout="folder", scenes=["office"],
                             image_size=224, graph="swin-2", frames_per_shard=frames_per_shard,
                             network=NetworkProvenance(predictor="gt-depth", arch="none", checkpoint="none",
                                                       checkpoint_sha256="none"))
    eye = np.broadcast_to(np.eye(4, dtype=np.float32), (n, 4, 4)).copy()
    tables = scene_store.SceneTables(info, [f"f{i}" for i in range(n)], [f"file:///f{i}" for i in range(n)],
                                     (np.arange(n) % 3 == 2).astype(np.uint8), edges, eye,
                                     np.broadcast_to(np.eye(3, dtype=np.float32), (n, 3, 3)).copy())
    group = scene_store.create_store(str(path), manifest, [tables])
    if not fill:
        scene_store.consolidate(group)
        return path, "office"
    rng = np.random.default_rng(2)
    written = {"frame_id", "uri", "split", "pairs/edges", "gt_cam2world", "gt_intrinsics"}
    for spec in expected_scene_arrays(manifest, info):
        rel = spec.path.split("/", 2)[2]
        if rel in written or spec.dtype == "str":
            continue
        arr = group[spec.path]
        if spec.dtype == "bool":
            arr[...] = rng.random(arr.shape) > 0.5
        elif spec.dtype.startswith("float"):
            arr[...] = rng.standard_normal(arr.shape).astype(spec.dtype)
        else:
            arr[...] = rng.integers(0, 200, arr.shape).astype(spec.dtype)
    scene_store.consolidate(group)
    return path, "office"


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("interop")
    scenes, _ = write_scene_store(root / "scenes.zarr")
    return {"features": write_feature_store(root / "features.zarr", "none"),
            "features-zstd": write_feature_store(root / "features-zstd.zarr", "zstd"),
            "features-blosc": write_feature_store(root / "features-blosc.zarr", "lz4"), "scenes": scenes}


def arrays(store: Path) -> dict[str, zarr.Array]:
    g = zarr.open_group(str(store), mode="r", use_consolidated=False)
    out: dict[str, zarr.Array] = {}

    def walk(node, prefix=""):
        for name, child in node.members():
            if isinstance(child, zarr.Group):
                walk(child, f"{prefix}{name}/")
            else:
                out[f"{prefix}{name}"] = child
    walk(g)
    return out


def tensorstore_read(store: Path, path: str) -> np.ndarray:
    ts = pytest.importorskip("tensorstore")
    t = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(store / path)}}, read=True).result()
    return t.read().result()


def same(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind in "OUST" or b.dtype.kind in "OUST":
        return a.shape == b.shape and [str(x) for x in a.ravel()] == [str(x) for x in b.ravel()]
    return a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")


@pytest.mark.parametrize("kind", ["features", "features-zstd", "features-blosc", "scenes"])
def test_every_array_reads_the_same_in_tensorstore_and_zarr(stores, kind):
    store = stores[kind]
    found = arrays(store)
    assert len(found) >= 20, sorted(found)
    direct_used, strings = [], []
    for path, arr in found.items():
        ours = arr[...]
        if arr.metadata.to_dict()["data_type"] == "string":
            # zarr-python's variable-length `string` type is an extension tensorstore does not implement
            # (0.1.86: "string data type is not one of the supported data types"): the id/uri/error tables
            with pytest.raises(ValueError, match="string data type"):
                tensorstore_read(store, path)
            strings.append(path)
            continue
        theirs = tensorstore_read(store, path)
        assert same(ours, theirs), f"{kind} {path}: tensorstore reads other values than zarr"
        direct = DirectShardReader.maybe(arr)
        if direct is not None:  # what the training reader serves for this array, shard by shard
            rows = np.concatenate([direct.read_shard(s) for s in range(-(-arr.shape[0] // direct.rows_per_shard))])
            assert same(rows, ours), f"{kind} {path}: direct shard reader differs"
            direct_used.append(path)
    # only the id/uri/error tables (and the sample index's ids); numbers and booleans all open in tensorstore
    assert {p.rsplit("/", 1)[-1] for p in strings} <= {"id", "frame_id", "uri", "error"}, strings
    if kind in ("features", "features-zstd"):  # both bulk layouts with crc32c go through the direct reader
        assert {"samples/image", "teachers/t/patch"} <= set(direct_used)


def test_feature_store_reader_serves_the_same_rows(stores):
    pytest.importorskip("torch")
    from distillkit.store.reader import StoreSource

    store = stores["features"]
    src = StoreSource(str(store))
    src._open()
    assert src._direct["teachers/t/patch"] is not None
    for name in src.array_names(True):  # image, patch, cls: all numeric
        got = np.concatenate([src.read(name, a, min(a + SHARD, N)) for a in range(0, N, SHARD)])
        assert same(got, tensorstore_read(store, name)), name


def test_xarray_sees_named_dimensions(stores):
    xr = pytest.importorskip("xarray")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = xr.open_zarr(str(stores["features"]), group="teachers/t", consolidated=False)
        assert t["patch"].dims == ("sample", "y", "x", "channel") and t["cls"].dims == ("sample", "channel")
        samples = xr.open_zarr(str(stores["features"]), group="samples", consolidated=False)
        assert samples["image"].dims == ("sample", "y", "x", "rgb")
        sc = xr.open_zarr(str(stores["scenes"]), group="scenes/office", consolidated=False)
        assert sc["pts3d"].dims[0] == "frame"
        np.testing.assert_array_equal(sc["pts3d"].values, zarr.open_array(str(stores["scenes"] / "scenes/office/pts3d"))[:])


@pytest.mark.parametrize("kind", ["features", "scenes"])
def test_consolidated_metadata_lists_every_array(stores, kind):
    root = json.loads((stores[kind] / "zarr.json").read_text())
    listed = {k for k, v in (root.get("consolidated_metadata") or {}).get("metadata", {}).items()
              if v["node_type"] == "array"}
    assert listed == set(arrays(stores[kind]))


def test_scene_writer_retires_the_snapshot_until_it_consolidates(tmp_path):
    """Readers of a scene store use its consolidated metadata, never a stale one: a writer (re-alignment) removes
    the snapshot when it opens the store, and consolidating again brings it back with the new attributes."""
    from distillkit_schemas.scenes import read_scene_manifest

    path, scene = write_scene_store(tmp_path / "s.zarr", fill=False)
    assert scene_store.open_store(str(path)).metadata.consolidated_metadata is not None
    writer = scene_store.open_store(str(path), "r+")
    writer[f"scenes/{scene}"].attrs["note"] = "realigned"
    reader = scene_store.open_store(str(path))
    assert reader.metadata.consolidated_metadata is None and reader[f"scenes/{scene}"].attrs["note"] == "realigned"
    assert read_scene_manifest(reader).scenes == [scene]  # the root attributes survive the removal
    scene_store.consolidate(writer)
    reader = scene_store.open_store(str(path))
    assert reader.metadata.consolidated_metadata is not None and reader[f"scenes/{scene}"].attrs["note"] == "realigned"
