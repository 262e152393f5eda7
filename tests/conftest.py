"""Shared fixtures. Prefect state goes to a throw-away home; nothing phones home."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

_PREFECT_HOME = tempfile.mkdtemp(prefix="distillkit-test-prefect-")
os.environ.update({
    "PREFECT_HOME": _PREFECT_HOME, "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120", "PREFECT_LOGGING_LEVEL": "WARNING",
})
warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from distillkit.config.cache import CacheConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv running the tests: its distillkit, prefect, torchrun, moto_server
TINY_TEACHER = {"name": "dinov2_vits14_reg", "overrides": {"depth": 2}}  # real timm DINOv2 arch, 2 blocks


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on a shared 2-core box: one intra-op thread is as fast and does not stall when the cores are
    busy (OpenMP). Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_PREFECT_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> Path:
    """12 real photographs (scikit-image), several sizes and aspect ratios, as JPEG/PNG."""
    from distillkit.demo_data import load_photos

    folder = tmp_path_factory.mktemp("photos")
    for name, arr in list(load_photos().items())[:6]:
        Image.fromarray(arr).save(folder / f"{name}.png")
        h, w = arr.shape[:2]
        Image.fromarray(arr[: h // 2, : w // 3]).convert("RGB" if arr.ndim == 3 else "L").save(
            folder / f"{name}_crop.jpg", quality=90)
    return folder


def tiny_cache_config(source, store, **kw) -> CacheConfig:
    base = dict(source=str(source), store=str(store), teachers=[TINY_TEACHER], image_size=56, student_patch=14,
                shard_size=4, batch_size=4, num_workers=2, val_fraction=0.25)
    base.update(kw)
    return CacheConfig(**base)


@pytest.fixture(scope="session")
def cached_store(photos, tmp_path_factory) -> Path:
    """A complete store of the 12 photos with the tiny teacher."""
    from distillkit.cache import run_cache

    store = tmp_path_factory.mktemp("stores") / "tiny.zarr"
    run_cache(tiny_cache_config(photos, store), show_progress=False)
    return store


def assert_same_files(want: dict[str, bytes], got: dict[str, bytes]) -> None:
    """Byte equality of two stores' objects, failing with the paths that differ (never a dump of the bytes)."""
    missing, extra = sorted(want.keys() - got.keys()), sorted(got.keys() - want.keys())
    differ = sorted(k for k in want.keys() & got.keys() if want[k] != got[k])
    assert not (missing or extra or differ), f"missing {missing}, extra {extra}, different bytes {differ}"


def read_all(store: Path) -> dict[str, np.ndarray]:
    """Every array of a store, by path (for byte-equality checks)."""
    import zarr

    g = zarr.open_group(str(store), mode="r", use_consolidated=False)
    out = {}

    def walk(node, prefix=""):
        for name, child in node.members():
            path = f"{prefix}{name}"
            if isinstance(child, zarr.Group):
                walk(child, path + "/")
            else:
                out[path] = child[...]
    walk(g)
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API server (moto in server mode) on 127.0.0.1; s3fs finds it through the usual AWS variables."""
    from distillkit.bench.local_s3 import LocalS3Server

    server = LocalS3Server(None, "testing-key-id", "testing-secret-DO-NOT-LEAK")
    old = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    try:
        yield server.endpoint
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.close()


@pytest.fixture
def s3_bucket(s3_server, request):
    """A fresh bucket per test."""
    import re

    import s3fs

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-") or "bucket"
    fs = s3fs.S3FileSystem()
    fs.mkdir(name)
    s3fs.S3FileSystem.clear_instance_cache()
    return name


@pytest.fixture(scope="session")
def oracle_scene_store(tmp_path_factory) -> Path:
    """A scene store of two synthetic 12-Scenes scenes (portrait 128x96 and landscape 96x128 colour), aligned from
    exact GT-depth pairs with the dataset's poses: world pointmaps = the true scene (metres)."""
    from distillkit.config.scenes import SceneCacheConfig
    from distillkit.scenes.pipeline import run_scenes
    from distillkit.scenes.synthetic import write_12scenes

    root = tmp_path_factory.mktemp("pm_scenes")
    write_12scenes(root / "office" / "wide", n_frames=16, color_hw=(96, 128), depth_hw=(48, 64), seed=4,
                   n_test=4, n_inf=1, n_holes=1)
    write_12scenes(root / "office" / "tall", n_frames=12, color_hw=(128, 96), depth_hw=(64, 48), seed=9,
                   n_test=3, n_inf=0, n_holes=1)
    store = root / "scenes.zarr"
    run_scenes(SceneCacheConfig(source=str(root), store=str(store), image_size=64, graph="swin-2-noncyclic",
                                predictor="gt-depth", device="cpu", max_frames=None, frames_per_shard=8,
                                align={"known_poses": True, "known_intrinsics": True, "pose_pixels": 1024,
                                       "max_iters": 15}))
    return store


@pytest.fixture(scope="module")
def harness():
    """A real Prefect API for the flows (prefect_test_harness: SQLite + server process), one per test module."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        from prefect.settings import PREFECT_API_URL

        # Dask worker processes read settings from the environment: point them at the harness server
        old = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = PREFECT_API_URL.value()
        yield
        if old is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = old
