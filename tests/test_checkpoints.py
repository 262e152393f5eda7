"""Student checkpoints are plain data read with weights_only=True: a checkpoint whose pickle would run code is
refused, with a clear error, by every way a checkpoint gets loaded (resume, init_from, the retrain flow, `show`),
and never executed. Plus the format itself: marker, kind, round trips of both trainers' checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from distillkit.cli import app
from distillkit.scenes.synthetic import synthetic_scene
from distillkit.training.checkpoint import FORMAT, init_from, load_checkpoint, save_checkpoint
from distillkit.training.dune.config import TrainConfig
from distillkit.training.dune.trainer import train
from distillkit.training.pointmap.config import PointmapTrainConfig
from distillkit.training.pointmap.evaluate import load_pointmap_student
from distillkit.training.pointmap.trainer import train_pointmap_student

runner = CliRunner()
TINY_DUNE = {"preset": "custom", "embed_dim": 32, "depth": 1, "num_heads": 2}
TINY_CNN = {"kind": "cnn", "cnn_widths": [16, 32, 32], "cnn_strides": [2, 2, 1], "head_widths": [32]}
DUNE_CLI = ["--preset", "custom", "--embed-dim", "32", "--depth", "1", "--heads", "2", "--max-steps", "2",
            "--batch-size", "3", "--num-workers", "0", "--device", "cpu"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _CreatesAFile:
    """Unpickling this calls open(path, "w"): stands for any code a hostile checkpoint could run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def _hostile(path, marker, kind="dune"):
    """A checkpoint that looks like ours (marker included) but whose model entry runs code when unpickled."""
    torch.save({"format": FORMAT, "kind": kind, "model": {"w": _CreatesAFile(marker)}}, path)
    return path


def _flat(output: str) -> str:
    return " ".join(output.split())  # rich wraps long error lines


def _refused(result, marker) -> None:
    out = _flat(result.output)
    assert result.exit_code == 2, result.output
    assert "refused" in out and "could run code" in out, result.output
    assert not marker.exists(), "the hostile checkpoint ran"


def test_the_hostile_file_really_runs_code_when_unpickled(tmp_path):
    """(The fixture is live: the same file loaded the unsafe way creates its file.)"""
    marker = tmp_path / "ran"
    path = _hostile(tmp_path / "x.pt", marker)
    with pytest.raises(ValueError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)
    assert marker.exists()


# ---------------------------------------------------------------------------------- refused by every entry point
def test_dune_resume_refuses_a_hostile_checkpoint(cached_store, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    marker = tmp_path / "ran"
    _hostile(out / "checkpoint-last.pt", marker)
    r = runner.invoke(app, ["train", "--store", str(cached_store), "--out", str(out), *DUNE_CLI])
    _refused(r, marker)
    assert "checkpoint-last.pt" in _flat(r.output).replace(" ", "")


def test_pointmap_resume_refuses_a_hostile_checkpoint(oracle_scene_store, tmp_path):
    out = tmp_path / "pm"
    (out / "office_wide").mkdir(parents=True)
    marker = tmp_path / "ran"
    _hostile(out / "office_wide" / "checkpoint-last.pt", marker, "pointmap")
    r = runner.invoke(app, ["train", "--task", "pointmap", "--store", str(oracle_scene_store), "--scene",
                            "office_wide", "--student", "cnn", "--image-size", "24x32", "--max-steps", "2",
                            "--out", str(out)])
    _refused(r, marker)


def test_init_from_in_a_yaml_config_refuses_a_hostile_checkpoint(cached_store, oracle_scene_store, tmp_path):
    marker = tmp_path / "ran"
    evil = _hostile(tmp_path / "colleague.pt", marker)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"stores: [{cached_store}]\nout_dir: {tmp_path / 'run'}\nstudent: {json.dumps(TINY_DUNE)}\n"
                   f"max_steps: 2\nbatch_size: 3\nnum_workers: 0\ninit_from: {evil}\n")
    r = runner.invoke(app, ["train", "-c", str(cfg)])
    _refused(r, marker)
    assert "init_from" in r.output
    pm = tmp_path / "pm.yaml"
    pm.write_text(f"task: pointmap\nstore: {oracle_scene_store}\nout_dir: {tmp_path / 'pm'}\nscenes: [office_wide]\n"
                  f"student: {json.dumps(TINY_CNN)}\nimage_size: [24, 32]\nmax_steps: 2\ninit_from: {evil}\n")
    r = runner.invoke(app, ["train", "-c", str(pm)])
    _refused(r, marker)


@pytest.mark.slow
def test_retrain_flow_refuses_a_hostile_checkpoint(harness, cached_store, tmp_path):  # noqa: F811
    from distillkit_flows.retrain_student import retrain_student

    marker = tmp_path / "ran"
    evil = _hostile(tmp_path / "colleague.pt", marker)
    cfg = TrainConfig(stores=[str(cached_store)], out_dir=str(tmp_path / "students"), max_steps=2, num_workers=0,
                      batch_size=3, student=TINY_DUNE, init_from=str(evil))
    with pytest.raises(ValueError, match="refused"):
        retrain_student(config=cfg)
    assert not marker.exists()


def test_show_refuses_a_hostile_checkpoint(cached_store, oracle_scene_store, tmp_path):
    marker = tmp_path / "ran"
    evil = _hostile(tmp_path / "colleague.pt", marker)
    r = runner.invoke(app, ["show", str(cached_store), "--checkpoint", str(evil), "--n", "2",
                            "--out", str(tmp_path / "pca.png")])
    _refused(r, marker)
    r = runner.invoke(app, ["show", str(oracle_scene_store), "--scene", "office_wide", "--checkpoint", str(evil),
                            "--out", str(tmp_path / "views")])
    _refused(r, marker)


# ------------------------------------------------------------------------------------------------ the format
@pytest.fixture(scope="module")
def dune_checkpoint(cached_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("dune")
    return train(TrainConfig(stores=[str(cached_store)], out_dir=str(out), max_steps=2, num_workers=0,
                             batch_size=3, student=TINY_DUNE))["checkpoint"]


@pytest.fixture(scope="module")
def pointmap_checkpoint(tmp_path_factory):
    scene = synthetic_scene(n_train=8, n_test=4, H=32, W=48, seed=1, hole_fraction=0.1)
    out = tmp_path_factory.mktemp("pointmap")
    return train_pointmap_student(PointmapTrainConfig(out_dir=str(out), student=TINY_CNN, max_steps=2,
                                                      batch_size=4, color_jitter=0.2), scene)["checkpoint"]


def _only_plain(obj, where="ck"):
    if isinstance(obj, dict):
        for k, v in obj.items():
            _only_plain(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _only_plain(v, f"{where}[{i}]")
    else:
        assert obj is None or type(obj) in (bool, int, float, str) or isinstance(obj, torch.Tensor), \
            f"{where}: {type(obj)}"


def test_dune_checkpoint_round_trips(dune_checkpoint):
    ck = load_checkpoint(dune_checkpoint, "dune")
    assert ck["format"] == FORMAT and ck["kind"] == "dune"
    assert set(ck) >= {"model", "optimizer", "scheduler", "position", "data_spec", "teachers", "metrics", "rng",
                       "student", "teacher_dims"}
    assert ck["position"]["step"] == 2 and ck["rng"]["torch"].dtype == torch.uint8
    _only_plain(ck)
    with pytest.raises(ValueError, match="is a DUNE-student checkpoint, expected a pointmap-student one"):
        load_checkpoint(dune_checkpoint, "pointmap")


def test_pointmap_checkpoint_round_trips(pointmap_checkpoint):
    ck = load_checkpoint(pointmap_checkpoint, "pointmap")
    assert ck["kind"] == "pointmap" and ck["step"] == 2 and ck["spec"]["image_hw"] == [32, 48]
    assert "mean_l2" in ck["metrics"]["final"]  # evaluation results (numpy scalars) were stored as plain numbers
    _only_plain(ck)
    model, cfg, spec = load_pointmap_student(pointmap_checkpoint)
    assert cfg.student.kind == "cnn" and spec["scene"] == ck["spec"]["scene"]
    with pytest.raises(ValueError, match="is a pointmap-student checkpoint, expected a DUNE-student one"):
        load_checkpoint(pointmap_checkpoint, "dune")


def test_each_task_rebuilds_its_student_from_its_checkpoint(dune_checkpoint, pointmap_checkpoint):
    """The registry's loaders: the student comes back with the checkpoint's weights, in eval mode."""
    from distillkit.training.tasks import TASKS

    for kind, path in (("dune", dune_checkpoint), ("pointmap", pointmap_checkpoint)):
        model = TASKS[kind].load_student(path)
        state = load_checkpoint(path, kind)["model"]
        assert not model.training and state.keys() == model.state_dict().keys()
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="is a DUNE-student checkpoint, expected a pointmap-student one"):
        TASKS["pointmap"].load_student(dune_checkpoint)


def test_init_from_copies_matching_tensors_of_the_right_kind(pointmap_checkpoint, dune_checkpoint):
    from distillkit.students.pointmap import build_pointmap_student
    from distillkit.students.pointmap.config import PointmapStudentConfig

    model = build_pointmap_student(PointmapStudentConfig(**TINY_CNN), (32, 48))
    n = init_from(model, pointmap_checkpoint, "pointmap")
    state = load_checkpoint(pointmap_checkpoint)["model"]
    assert n == len(state)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[k])
    wider = build_pointmap_student(PointmapStudentConfig(**{**TINY_CNN, "head_widths": [48]}), (32, 48))
    assert 0 < init_from(wider, pointmap_checkpoint, "pointmap") < len(state)  # the head no longer fits
    with pytest.raises(ValueError, match="init_from: .*is a DUNE-student checkpoint"):
        init_from(model, dune_checkpoint, "pointmap")


def test_clear_errors_for_files_that_are_not_our_checkpoints(tmp_path, dune_checkpoint, cached_store):
    with pytest.raises(ValueError, match="nope.pt: no such checkpoint file"):
        load_checkpoint(tmp_path / "nope.pt")
    old = tmp_path / "old.pt"  # an older distillkit's checkpoint: plain data, no marker
    torch.save({"model": torch.load(dune_checkpoint, weights_only=True)["model"], "position": {"step": 2}}, old)
    with pytest.raises(ValueError, match="old.pt: no distillkit checkpoint format marker"):
        load_checkpoint(old)
    older = tmp_path / "older.pt"  # numpy scalars in the metrics (a pointmap checkpoint of an older distillkit)
    torch.save({"model": {}, "metrics": {"mean_l2": np.float64(0.1)}}, older)
    with pytest.raises(ValueError, match="older.pt: refused: .*numpy"):
        load_checkpoint(older)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="junk.pt: not a readable torch checkpoint"):
        load_checkpoint(junk)
    out = tmp_path / "run"  # resuming from it says so too
    out.mkdir()
    old.rename(out / "checkpoint-last.pt")
    r = runner.invoke(app, ["train", "--store", str(cached_store), "--out", str(out), *DUNE_CLI])
    assert r.exit_code == 2 and "no distillkit checkpoint format marker" in _flat(r.output), r.output


def test_a_safe_checkpoint_from_before_the_marker_still_loads(tmp_path, dune_checkpoint, pointmap_checkpoint):
    for path, kind in ((dune_checkpoint, "dune"), (pointmap_checkpoint, "pointmap")):
        ck = torch.load(path, weights_only=True)
        legacy = tmp_path / f"legacy-{kind}.pt"
        torch.save({k: v for k, v in ck.items() if k not in ("format", "kind")}, legacy)
        back = load_checkpoint(legacy, kind)
        assert back["kind"] == kind and back["format"] == FORMAT
        assert all(torch.equal(back["model"][k], v) for k, v in ck["model"].items())
        with pytest.raises(ValueError, match="expected a"):
            load_checkpoint(legacy, "pointmap" if kind == "dune" else "dune")


def test_save_writes_plain_data_atomically(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, "pointmap", {"model": {"w": torch.ones(2)}, "metrics": {"l2": np.float32(0.5),
                                                                                  "per_frame": np.arange(3)},
                                       "hw": (2, 3), "size": torch.Size([4, 5])})
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind
    ck = load_checkpoint(path, "pointmap")
    assert ck["metrics"] == {"l2": 0.5, "per_frame": [0, 1, 2]} and type(ck["metrics"]["l2"]) is float
    assert ck["hw"] == (2, 3) and ck["size"] == (4, 5)
    with pytest.raises(TypeError, match=r"checkpoint\['cfg'\] is a pathlib"):
        save_checkpoint(path, "dune", {"cfg": tmp_path})
    with pytest.raises(ValueError, match="format marker"):
        save_checkpoint(path, "dune", {"kind": "x"})
    with pytest.raises(ValueError, match="unknown checkpoint kind"):
        save_checkpoint(path, "nerf", {})
    assert load_checkpoint(path)["kind"] == "pointmap"  # the failed saves left the checkpoint as it was
