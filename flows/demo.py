"""`make demo`: real photographs -> cache-teachers flow -> train-student flow, on embedded defaults.

Prefect runs without a separately started server (a temporary local one), the store is a local directory, and the
device is the GPU if there is one, else the CPU. No weights can be downloaded, so the teacher is randomly initialised
unless DISTILLKIT_DEMO_CHECKPOINT points at real DINOv2 ViT-S/14-reg weights.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
import warnings
from pathlib import Path

# The demo's temporary Prefect server keeps its database beside the demo's output, not in the user's ~/.prefect
# (before prefect is imported: it reads PREFECT_HOME once).
if __name__ == "__main__":
    os.environ.setdefault("PREFECT_HOME", str(Path((sys.argv[1:] or ["demo_out"])[0]).resolve() / ".prefect"))
import distillkit_flows  # noqa: E402, F401  (environment defaults before prefect)
from distillkit.config.cache import CacheConfig  # noqa: E402
from distillkit.demo_data import write_demo_images  # noqa: E402
from distillkit.training.dune.config import TrainConfig  # noqa: E402
from distillkit_flows.cache_teachers import cache_teachers  # noqa: E402
from distillkit_flows.train_student import train_student  # noqa: E402


def main(out: str = "demo_out") -> int:
    warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
    out_dir = Path(out).resolve()
    images = out_dir / "images"
    t0 = time.perf_counter()
    paths = write_demo_images(images)
    (images / "broken_download.jpg").write_bytes(paths[0].read_bytes()[:2048])  # shows: bad inputs are skipped
    print(f"demo: wrote {len(paths)} photographs (+1 truncated file) from scikit-image to {images}")
    store = str(out_dir / "dinov2_vits14_reg.zarr")
    cache_cfg = CacheConfig(source=str(images), store=store,
                            teachers=[{"name": "dinov2_vits14_reg",
                                       "checkpoint": os.environ.get("DISTILLKIT_DEMO_CHECKPOINT")}],
                            image_size=224, student_patch=14, shard_size=16, batch_size=16, val_fraction=0.1)
    cache_teachers(config=cache_cfg)
    train_cfg = TrainConfig(stores=[store], out_dir=str(out_dir / "student"),
                            student={"preset": "vit_tiny", "depth": 6}, batch_size=16, epochs=12, lr=1e-3,
                            num_workers=2, ckpt_every=20)
    result = train_student(config=train_cfg)
    wall = time.perf_counter() - t0
    print("\n" + "=" * 78)
    print(f"distillkit demo finished in {wall:.0f} s")
    print(f"  teacher store : {store}")
    print(f"  checkpoint    : {result['checkpoint']}")
    print(f"  metrics       : {result['metrics']}  (loss {result['first_loss']:.3f} -> {result['last_loss']:.3f})")
    print(f"  loss curve    : {result['loss_curve']}")
    print("next (tests/test_first_hour.py runs these on a small store):")
    for argv, why in next_commands(store, str(out_dir / "student")):
        print(f"  .venv/bin/{shlex.join(argv)}   # {why}")
    print("=" * 78)
    return 0


def next_commands(store: str, student: str) -> list[tuple[list[str], str]]:
    """What the demo tells the user to run next, with why: look at the store, then train the student further."""
    return [(["distillkit", "inspect", store], "arrays, codecs, bytes, provenance"),
            (["distillkit", "validate", store], "schema, completeness, NaN/Inf"),
            (["distillkit", "bench", "loader", "--store", store, "--epochs", "1"], "streaming read speed"),
            (["distillkit", "train", "--store", store, "--out", student, "--epochs", "24"],
             "resumes the demo's student with its own settings, for 24 epochs in all")]


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
