"""DUSt3R scenes: dataset readers, encoder-once pair inference, alignment, scene stores, CLI, the align-scenes flow."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import zarr
from PIL import Image

from distillkit.config.scenes import SceneCacheConfig
from distillkit.geometry import make_pairs
from distillkit.scenes import pipeline
from distillkit.scenes import store as st
from distillkit.scenes.frames import crop_geometry, load_frame
from distillkit.scenes.sources import discover, read_7scenes, select_frames
from distillkit.scenes.synthetic import render, write_7scenes, write_12scenes
from distillkit.teachers.croco import AsymmetricCroCo3DStereo, resize_and_crop

# tiny random DUSt3R (linear head): exercises the real network code in milliseconds
TINY = {"enc_embed_dim": 64, "enc_depth": 2, "enc_num_heads": 2, "dec_embed_dim": 32, "dec_depth": 2,
        "dec_num_heads": 2, "head_type": "linear"}
TINY_DPT = {"enc_embed_dim": 64, "enc_depth": 2, "enc_num_heads": 2, "dec_embed_dim": 32, "dec_depth": 4,
            "dec_num_heads": 2, "dpt_feature_dim": 16, "dpt_last_dim": 8, "dpt_layer_dims": [8, 16, 32, 32]}
# the random network's garbage pair outputs make the aligner's line searches overflow on the way (harmless)
pytestmark = [pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",
                                         "ignore:invalid value encountered:RuntimeWarning"),
              pytest.mark.usefixtures("one_torch_thread")]
SMALL = dict(n_frames=8, color_hw=(96, 128), depth_hw=(48, 64), n_inf=2, n_holes=2)
FAST_ALIGN = {"pose_pixels": 1024, "max_iters": 15}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A dataset root with one synthetic 12-Scenes scene (8 frames, 2 INF poses, 2 depth holes)."""
    root = tmp_path_factory.mktemp("scenes12")
    gt = write_12scenes(root / "office" / "synth", seed=3, **SMALL)
    return root, gt


def scene_cfg(source, store, **kw) -> SceneCacheConfig:
    base = dict(source=str(source), store=str(store), image_size=64, graph="swin-2-noncyclic", device="cpu",
                network={"overrides": TINY, "seed": 1}, batch_size=4, frames_per_shard=4,
                align={"known_poses": False, "known_intrinsics": False, **FAST_ALIGN})
    for k, v in kw.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return SceneCacheConfig(**base)


# ---------------------------------------------------------------------------------------------- readers
def test_12scenes_reader_skips_inf_poses_splits_and_depth_units(dataset):
    root, gt = dataset
    (scene,) = discover(str(root))
    assert scene.name == "office_synth" and scene.layout == "12scenes"
    assert scene.n_invalid == 2 and len(scene.frames) == 6
    numbers = [int(f.frame_id.split("-")[1]) for f in scene.frames]
    assert set(numbers).isdisjoint(gt["inf"]) and numbers == sorted(numbers)
    assert [f.split for f in scene.frames] == [int(k < gt["n_test"]) for k in numbers]  # split.txt line 1 = test
    for f, k in zip(scene.frames, numbers):
        np.testing.assert_allclose(f.cam2world, gt["cam2world"][k], atol=1e-8)
    np.testing.assert_allclose(scene.color_K, gt["color_K"], rtol=1e-9)
    only_test = select_frames(scene, ["test"])
    assert {f.split for f in only_test.frames} == {1}
    # depth: millimetres -> metres, holes -> 0, and on the cropped colour pixels it is the exact ray-cast depth
    for f, k in zip(scene.frames, numbers):
        fr = load_frame(scene, f, 64)
        assert fr.image.shape == (48, 64, 3) and fr.depth.shape == (48, 64)
        ref, _, _ = render(gt["room"], gt["cam2world"][k], fr.K, (48, 64))
        ok = fr.depth > 0
        close = np.abs(fr.depth - ref) < 0.011  # 1 mm quantisation + nearest sample of a 2x coarser depth map
        assert close[ok].mean() > 0.93, (k, close[ok].mean())  # off only on depth edges
        assert np.median(np.abs(fr.depth - ref)[ok]) < 1e-3
        if k in gt["holes"]:
            assert (~ok).mean() > 0.03
        else:
            assert ok.mean() > 0.97


def test_7scenes_reader(tmp_path):
    gt = write_7scenes(tmp_path / "chess", n_frames=8, color_hw=(96, 128), depth_hw=(96, 128), seed=1)
    scene = read_7scenes(__import__("fsspec").filesystem("file"), str(tmp_path / "chess"))
    assert scene.layout == "7scenes" and len(scene.frames) == 8 and scene.n_invalid == 0
    by_id = {f.frame_id: f for f in scene.frames}
    for k, fid in gt["frame_ids"].items():
        assert by_id[fid].split == int(fid.startswith("seq-02"))
        np.testing.assert_allclose(by_id[fid].cam2world, gt["cam2world"][k], atol=1e-8)
    assert scene.frames[0].frame_id.startswith("seq-01/")  # TrainSplit before TestSplit
    for k, fid in gt["frame_ids"].items():
        fr = load_frame(scene, by_id[fid], 64)
        np.testing.assert_allclose(fr.K[0, 0], 525 * 64 / 640, rtol=1e-9)  # RGB focal 525 at 640 px, rescaled
        ref, _, _ = render(gt["room"], gt["cam2world"][k], fr.K, fr.image.shape[:2])
        ok = fr.depth > 0  # 65535 = invalid -> 0
        # the depth camera (f 585) is sampled at the nearest of its pixels for each RGB (f 525) pixel
        assert np.median(np.abs(fr.depth - ref)[ok] / ref[ok]) < 5e-3
        assert (~ok).mean() > (0.03 if k in gt["holes"] else -1)
        raw = np.asarray(Image.open(by_id[fid].depth))
        assert (raw == 65535).any() == (k in gt["holes"])


def test_folder_layout_discovery_and_crop_geometry(tmp_path):
    for scene, sizes in (("a", [(480, 640), (480, 640), (300, 200)]), ("b", [(968, 1296), (968, 1296)])):
        (tmp_path / "photos" / scene).mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            Image.fromarray(np.full((h, w, 3), 40 * i, np.uint8)).save(tmp_path / "photos" / scene / f"{i}.jpg")
    scenes = discover(str(tmp_path / "photos"))
    assert [(s.name, s.layout, len(s.frames), s.has_gt) for s in scenes] == [("a", "folder", 3, False),
                                                                             ("b", "folder", 2, False)]
    cfg = scene_cfg(tmp_path / "photos", tmp_path / "x.zarr", image_size=512)
    with pytest.raises(ValueError, match=r"scene a: frames of different sizes \(384x512: frame 0.jpg, frame 1.jpg; "
                       r"512x336: frame 2.jpg\)"):
        pipeline.plan_scene(scenes[0], cfg)
    with pytest.raises(ValueError, match="scene a: frames of different sizes"):  # nothing written
        pipeline.prepare(cfg.model_copy(update={"scenes": ["a"]}))
    assert not (tmp_path / "x.zarr").exists()
    planned = pipeline.plan_scene(scenes[0], cfg.model_copy(update={"mixed_sizes": "skip"}))
    assert planned[1].info.n_frames == 2 and planned[1].info.n_skipped_size == 1  # the portrait frame is dropped
    with pytest.raises(ValueError, match="no scene of the 12scenes layout"):
        discover(str(tmp_path / "photos"), layout="12scenes")
    for hw in ((480, 640), (640, 480), (968, 1296), (200, 300), (512, 512)):
        img = Image.new("RGB", hw[::-1])
        for size in (512, 224, 64):
            out = resize_and_crop(img, size)
            assert crop_geometry(hw, size).out_hw == (out.size[1], out.size[0])


# ---------------------------------------------------------------------------------------------- inference
@pytest.mark.parametrize("overrides", [TINY, TINY_DPT], ids=["linear", "dpt"])
def test_pair_inference_equals_per_pair_forward(overrides):
    from distillkit.scenes.inference import infer_pairs, random_config

    torch.manual_seed(0)
    # float64: the comparison shows the reordering is exact math (float32 differs only by GEMM rounding, ~1e-7)
    model = AsymmetricCroCo3DStereo(random_config("DUSt3R_ViTLarge_BaseDecoder_512_dpt", overrides)).eval().double()
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 48, 3), dtype=np.uint8)
    edges = make_pairs(5, "swin-2", symmetrize=True)
    encoded = []
    hook = model.patch_embed.register_forward_hook(lambda m, i, o: encoded.append(i[0].shape[0]))
    batches = list(infer_pairs(model, images, edges, batch_size=3))
    hook.remove()
    assert sum(encoded) == 5  # every image encoded exactly once, however many pairs it is in
    got = {k: np.concatenate([b[k] for _, _, b in batches]) for k in ("pts1", "pts2", "conf1", "conf2")}
    assert [(s, e) for s, e, _ in batches] == [(s, min(s + 3, len(edges))) for s in range(0, len(edges), 3)]
    x = ((torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5).double()
    with torch.inference_mode():
        for e, (i, j) in enumerate(edges.tolist()):
            p1, p2 = model(x[i:i + 1], x[j:j + 1])
            for key, ref in (("pts1", p1["pts3d"]), ("conf1", p1["conf"]), ("pts2", p2["pts3d_in_other_view"]),
                             ("conf2", p2["conf"])):
                np.testing.assert_allclose(got[key][e], ref[0].float().numpy(), rtol=1e-6, atol=1e-7)


def test_checkpoint_provenance_and_overlap_graph(dataset, tmp_path):
    from distillkit.scenes.inference import build_network
    from distillkit.teachers.croco import save_hf

    model, prov = build_network(None, seed=4, overrides=TINY)
    assert prov.checkpoint_sha256 == "random-init:4" and prov.is_random_init
    save_hf(model, str(tmp_path / "ckpt"))
    loaded, prov2 = build_network(str(tmp_path / "ckpt"))
    assert len(prov2.checkpoint_sha256) == 64 and prov2.config == prov.config
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match="random init only"):
        pipeline.network(scene_cfg(".", "x", network={"checkpoint": str(tmp_path / "ckpt")}))
    # overlap graph from the GT poses: connected, symmetric; a folder without poses falls back to a window
    root, _ = dataset
    (scene,) = discover(str(root))
    _, tables = pipeline.plan_scene(scene, scene_cfg(root, "x", graph="overlap-2"))
    e = tables.edges
    assert len(e) % 2 == 0 and {tuple(p) for p in e[: len(e) // 2]} == {tuple(p) for p in e[len(e) // 2:, ::-1]}
    assert "graph overlap-2" in tables.info.notes
    from distillkit.geometry.pairs import is_connected

    assert is_connected(e, tables.info.n_frames)


def test_cli_synth_cache_align(tmp_path):
    from typer.testing import CliRunner

    from distillkit.cli import app

    r = CliRunner().invoke(app, ["synth-scenes", str(tmp_path / "ds"), "--scenes", "2", "--frames", "5",
                                 "--color", "96x128", "--depth", "48x64", "--layout", "7scenes"])
    assert r.exit_code == 0, r.output
    yaml = tmp_path / "scenes.yaml"
    yaml.write_text(f"source: {tmp_path / 'ds'}\nstore: {tmp_path / 's.zarr'}\npredictor: gt-depth\n"
                    "image_size: 64\ngraph: complete\nalign: {pose_pixels: 1024, max_iters: 10}\n")
    r = CliRunner().invoke(app, ["cache-scenes", "--config", str(yaml), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "synth_office_0" in r.output and "status: complete" in r.output
    r = CliRunner().invoke(app, ["align", str(tmp_path / "s.zarr"), "--scene", "synth_office_1", "--json"])
    assert r.exit_code == 0, r.output
    import json

    (res,) = json.loads(r.output)
    assert res["runs"] == 2 and res["used_known_poses"] and res["gt_metrics"]["point_err_cm_median"] < 0.01
    r = CliRunner().invoke(app, ["validate", str(tmp_path / "s.zarr")])
    assert r.exit_code == 0, r.output


# ---------------------------------------------------------------------------------------------- pipeline
@pytest.fixture(scope="module")
def network_store(dataset, tmp_path_factory):
    """The synthetic scene through the library pipeline with the tiny random network."""
    root, _ = dataset
    store = tmp_path_factory.mktemp("stores") / "net.zarr"
    cfg = scene_cfg(root, store)
    result = pipeline.run_scenes(cfg)
    return cfg, result


def test_pipeline_store_is_valid_and_opens_in_xarray(network_store, dataset):
    import xarray as xr

    from distillkit.stores import summarize, validate_store

    cfg, result = network_store
    (r,) = result["scenes"]
    assert result["finalize"]["status"] == "complete" and r["n_frames"] == 6 and r["n_edges"] == 18
    assert validate_store(cfg.store) == []
    from distillkit_schemas import SceneManifest, validate_structure

    manifest, infos, problems = validate_structure(zarr.open_group(cfg.store, mode="r"))  # the schema-only hook
    assert isinstance(manifest, SceneManifest) and problems == [] and infos["office_synth"].n_skipped_invalid == 2
    s = summarize(cfg.store)
    assert s.kind == "scenes" and s.completion == 100.0 and s.manifest["network"]["checkpoint_sha256"] == \
        "random-init:1"
    ds = xr.open_zarr(cfg.store, group="scenes/office_synth")
    assert ds["pts3d"].dims == ("frame", "y", "x", "xyz") and ds.sizes["frame"] == 6
    gt = dataset[1]
    valid = [k for k in range(SMALL["n_frames"]) if k not in gt["inf"]]
    assert ds["cam2world"].shape == (6, 4, 4) and ds["split"].values.tolist() == [int(k < gt["n_test"]) for k in valid]
    assert ds["frame_id"].values.tolist() == [f"frame-{k:06d}" for k in valid]
    g = zarr.open_group(cfg.store, mode="r")
    rec = g["scenes/office_synth"].attrs["alignment"]
    assert rec["used_known_poses"] is False and len(rec["residuals"]["frame_loss"]) == 6
    assert "rel_rot_err_deg_mean" in rec["gt_metrics"] and rec["timings"]["total_s"] > 0
    comp = g["scenes/office_synth/pts3d"].metadata.codecs[0].codecs  # sharding codec -> inner codecs
    # (zarr 3.1 holds the shuffle as an enum, 3.4 as its string)
    assert any(type(c).__name__ == "BloscCodec" and getattr(c.shuffle, "name", c.shuffle) == "bitshuffle"
               for c in comp)
    # a second run is a no-op; another graph is refused
    assert pipeline.run_scenes(cfg)["nothing_to_do"] is True
    with pytest.raises(ValueError, match="graph"):
        pipeline.prepare(cfg.model_copy(update={"graph": "complete"}))


def test_realign_from_stored_pairs_gives_the_same_result(network_store, monkeypatch):
    cfg, _ = network_store
    g = zarr.open_group(cfg.store, mode="r")
    keys = ("pts3d", "depth", "conf", "mask", "cam2world", "intrinsics")
    before = {k: g[f"scenes/office_synth/{k}"][:] for k in keys}

    def no_network(*a, **k):
        raise AssertionError("re-alignment must not load the network")

    monkeypatch.setattr(pipeline, "network", no_network)
    (r,) = pipeline.realign(cfg.store)
    assert r["runs"] == 2
    after = {k: g[f"scenes/office_synth/{k}"][:] for k in keys}
    for k in keys:
        np.testing.assert_allclose(after[k], before[k], rtol=1e-6, atol=1e-7, err_msg=k)


def test_export_ply_is_readable_and_show_writes_pngs(network_store, tmp_path):
    from plyfile import PlyData
    from typer.testing import CliRunner

    from distillkit.cli import app

    cfg, _ = network_store
    run = CliRunner().invoke(app, ["export-ply", cfg.store, "--scene", "office_synth", "--conf-thr", "1.5",
                                   "--out", str(tmp_path / "x.ply")])
    assert run.exit_code == 0, run.output
    ply = PlyData.read(str(tmp_path / "x.ply"))
    v = ply["vertex"]
    g = zarr.open_group(cfg.store, mode="r")
    conf = g["scenes/office_synth/conf"][:]
    keep = conf > 1.5
    assert 0 < v.count == int(keep.sum()) and ply.elements[0].properties[3].name == "red"
    np.testing.assert_array_equal(v["x"], g["scenes/office_synth/pts3d"][:][keep][:, 0])
    np.testing.assert_array_equal(v["red"], g["scenes/office_synth/image"][:][keep][:, 0])
    run = CliRunner().invoke(app, ["show", cfg.store, "--scene", "office_synth", "--out", str(tmp_path / "v"),
                                   "--n", "2"])
    assert run.exit_code == 0, run.output
    assert (tmp_path / "v" / "overview.png").exists() and len(list((tmp_path / "v").glob("*_pts3d.png"))) == 2
    run = CliRunner().invoke(app, ["inspect", cfg.store])
    assert run.exit_code == 0 and "RANDOMLY initialised" in run.output and "office_synth" in run.output


def test_known_poses_and_oracle_pairs_through_the_pipeline(dataset, tmp_path):
    from distillkit.scenes.quality import gt_world_points

    root, _ = dataset
    # exact pairs from GT depth + known poses and intrinsics: the aligned scene is the GT scene
    cfg = scene_cfg(root, tmp_path / "oracle.zarr", predictor="gt-depth",
                    align={"known_poses": True, "known_intrinsics": True})
    (r,) = pipeline.run_scenes(cfg)["scenes"]
    g = zarr.open_group(cfg.store, mode="r")
    b = "scenes/office_synth"
    gt_c2w, gt_K, gt_depth = (g[f"{b}/{k}"][:] for k in ("gt_cam2world", "gt_intrinsics", "gt_depth"))
    np.testing.assert_array_equal(g[f"{b}/cam2world"][:], gt_c2w)
    valid = gt_depth > 0
    ref = gt_world_points(gt_depth, gt_K, gt_c2w)
    assert np.abs(g[f"{b}/pts3d"][:] - ref)[valid].max() < 1e-4
    assert r["gt_metrics"]["point_err_cm_median"] < 0.01
    # free poses: recovered up to a similarity
    res = pipeline.realign(cfg.store, overrides={"known_poses": False, "known_intrinsics": False})[0]
    assert res["gt_metrics"]["point_err_cm_median"] < 1.0 and res["gt_metrics"]["rel_rot_err_deg_mean"] < 2.0
    # the network with known poses: cameras fixed to the dataset's, focal fixed to GT
    cfg = scene_cfg(root, tmp_path / "known.zarr", align={"known_poses": True, "known_intrinsics": True})
    pipeline.run_scenes(cfg)
    g = zarr.open_group(cfg.store, mode="r")
    np.testing.assert_array_equal(g[f"{b}/cam2world"][:], gt_c2w)
    K = g[f"{b}/intrinsics"][:]
    np.testing.assert_allclose(K[:, 0, 0], (gt_K[:, 0, 0] + gt_K[:, 1, 1]) / 2)
    assert np.isfinite(g[f"{b}/pts3d"][:]).all()


def test_resume_after_pairs_redoes_only_the_alignment(dataset, tmp_path, monkeypatch):
    from distillkit.scenes import inference

    root, _ = dataset
    cfg = scene_cfg(root, tmp_path / "resume.zarr")
    prepared = pipeline.prepare(cfg)

    def crash(*a, **k):
        raise RuntimeError("killed during alignment")

    with monkeypatch.context() as m:
        m.setattr(pipeline, "align", crash)
        with pytest.raises(RuntimeError):
            pipeline.run_scene(cfg, "office_synth", prepared.sources["office_synth"])
    g = st.open_store(cfg.store)
    assert st.done_flags(g)[0].tolist() == [True] and st.done_flags(g)[1].tolist() == [False]
    from distillkit.stores import validate_store

    assert any("not aligned" in str(p) for p in validate_store(cfg.store))
    monkeypatch.setattr(inference, "infer_pairs", crash)  # pairs are stored: inference must not run again
    res = pipeline.run_scenes(cfg)
    assert res["finalize"]["status"] == "complete" and "inference_s" not in res["scenes"][0]["timings"]
    assert validate_store(cfg.store) == []


# ---------------------------------------------------------------------------------------------- Prefect flow
@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.mark.slow
def test_align_scenes_flow_end_to_end(harness, tmp_path):
    import distillkit_flows  # noqa: F401
    from prefect.artifacts import Artifact

    from distillkit.stores import validate_store
    from distillkit_flows.align_scenes import align_scenes
    from distillkit_flows.cache_teachers import cache_teachers

    root = tmp_path / "data"
    write_12scenes(root / "office" / "synth", seed=3, **SMALL)
    write_12scenes(root / "office" / "synth2", seed=5, **{**SMALL, "n_frames": 5, "n_inf": 0})
    cfg = scene_cfg(root, tmp_path / "flow.zarr")
    res = align_scenes(config=cfg, parallel=2)
    assert res["finalize"]["status"] == "complete" and sorted(r["scene"] for r in res["scenes"]) == \
        ["office_synth", "office_synth2"]
    assert validate_store(cfg.store) == []
    assert Artifact.get("scenes-summary") is not None
    # the cache-teachers flow runs scenes as its align-scenes sub-flow; a complete store is skipped
    again = cache_teachers(scenes=cfg.model_dump(mode="json"))
    assert again["scenes"]["nothing_to_do"] is True
    assert os.path.isdir(os.path.join(cfg.store, "scenes", "office_synth2", "pairs"))
