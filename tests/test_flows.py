"""The Prefect flows, run for real against a local Prefect API (prefect_test_harness: SQLite + server process)."""

from __future__ import annotations

import pytest
import zarr

from conftest import TINY_TEACHER

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_cache_then_train_flows(harness, photos, tmp_path):
    import flows  # noqa: F401
    from prefect.artifacts import Artifact
    from flows.cache_teachers import cache_teachers
    from flows.train_student import train_student

    from distillkit.config import CacheConfig, TrainConfig
    from distillkit.store.inspect import validate_store

    store = tmp_path / "flow.zarr"
    cfg = CacheConfig(source=str(photos), store=str(store), teachers=[TINY_TEACHER], image_size=56,
                      shard_size=3, batch_size=3, val_fraction=0.25)
    res = cache_teachers(config=cfg, parts=2)
    assert res["finalize"]["status"] == "complete" and res["samples"] == 12
    assert validate_store(str(store)) == []
    again = cache_teachers(config=cfg)
    assert again["nothing_to_do"] is True
    assert Artifact.get("cache-summary") is not None

    yaml_cfg = tmp_path / "train.yaml"
    yaml_cfg.write_text(f"stores: [{store}]\nout_dir: {tmp_path / 'student'}\nstudent: {{preset: custom, "
                        "embed_dim: 64, depth: 2, num_heads: 2}\nbatch_size: 3\nmax_steps: 6\nnum_workers: 0\n")
    out = train_student(config_file=str(yaml_cfg))
    assert out["steps"] == 6 and (tmp_path / "student" / "checkpoint-last.pt").exists()
    assert Artifact.get("student-eval") is not None
    # explicit parameters override the YAML file
    out2 = train_student(config=TrainConfig(stores=[str(store)], out_dir=str(tmp_path / "student2"),
                                            student={"preset": "custom", "embed_dim": 32, "depth": 1,
                                                     "num_heads": 2}, max_steps=2, num_workers=0, batch_size=3),
                         config_file=str(yaml_cfg))
    assert out2["steps"] == 2 and out2["checkpoint"].startswith(str(tmp_path / "student2"))
    assert zarr.open_group(str(store), mode="r").attrs["distillkit"]["status"] == "complete"


def test_flow_reports_bad_config_clearly(harness, tmp_path):
    from flows.cache_teachers import cache_teachers

    bad = tmp_path / "bad.yaml"
    bad.write_text("source: /nowhere\nstore: /tmp/x.zarr\nteachers: [dinov2_vits14_reg]\nshard_size: 0\n")
    with pytest.raises(ValueError, match="shard_size"):
        cache_teachers(config_file=str(bad))
