"""Shared fixtures. Prefect state goes to a throw-away home; nothing phones home."""

from __future__ import annotations

import os
import shutil
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

from distillkit.config import CacheConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY_TEACHER = {"name": "dinov2_vits14_reg", "overrides": {"depth": 2}}  # real timm DINOv2 arch, 2 blocks


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
