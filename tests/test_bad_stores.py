"""The damaged-store corpus (issue 21, classes 2 and 4): every kind of damage a store can take, through every verb
that reads it. Each case asserts the exit code (2 for an error, 1 for `validate` findings), that the output names the
damaged thing (file, array or shard), that the store's bytes are as they were (readers never write) and that no
file appeared or changed beside it (a refused `train` leaves no checkpoint)."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from typer.testing import CliRunner

from distillkit.cli import app

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()
T = "dinov2_vits14_reg"


def _flip(path: str, at: float = 0.5) -> None:
    b = bytearray(Path(path).read_bytes())
    b[int(len(b) * at)] ^= 0x10
    Path(path).write_bytes(bytes(b))


def _one(pattern: str) -> str:
    found = sorted(glob.glob(pattern))
    assert found, pattern
    return found[0]


def _truncate_json(path: str) -> None:
    Path(path).write_text(Path(path).read_text()[:40])


def _codec(path: str, name: str = "mystery_codec") -> None:
    meta = json.loads(Path(path).read_text())
    meta["codecs"][-1]["name"] = name
    Path(path).write_text(json.dumps(meta))


def _edit_root(store: Path, edit: Callable[[dict], None]) -> None:
    meta = json.loads((store / "zarr.json").read_text())
    edit(meta)
    (store / "zarr.json").write_text(json.dumps(meta))


@dataclass(frozen=True)
class Damage:
    name: str
    kind: str  # features | scenes
    apply: Callable[[Path], None]
    names: str  # what every message must name (relative to the store; "{store}" for the store path)


FEATURE_DAMAGE = [
    Damage("root zarr.json truncated", "features", lambda s: _truncate_json(str(s / "zarr.json")), "zarr.json"),
    Damage("patch array zarr.json truncated", "features",
           lambda s: _truncate_json(str(s / f"teachers/{T}/patch/zarr.json")), f"teachers/{T}/patch/zarr.json"),
    Damage("unknown codec in the CLS array", "features", lambda s: _codec(str(s / f"teachers/{T}/cls/zarr.json")),
           f"teachers/{T}/cls/zarr.json"),
    Damage("unknown codec in the image array", "features", lambda s: _codec(str(s / "samples/image/zarr.json")),
           "samples/image/zarr.json"),
    Damage("patch shard deleted", "features", lambda s: os.remove(_one(f"{s}/teachers/{T}/patch/c/1/*/*/*")),
           f"teachers/{T}/patch"),
    Damage("CLS shard deleted", "features", lambda s: os.remove(_one(f"{s}/teachers/{T}/cls/c/1/*")),
           f"teachers/{T}/cls"),
    Damage("image shard deleted", "features", lambda s: os.remove(_one(f"{s}/samples/image/c/1/*/*/*")),
           "samples/image"),
    Damage("flipped byte in a patch shard", "features", lambda s: _flip(_one(f"{s}/teachers/{T}/patch/c/1/*/*/*")),
           f"teachers/{T}/patch"),
    Damage("flipped byte in an image shard", "features", lambda s: _flip(_one(f"{s}/samples/image/c/0/*/*/*")),
           "samples/image"),
    Damage("validity shard deleted", "features", lambda s: os.remove(_one(f"{s}/samples/valid/c/1")),
           "samples/valid"),
    Damage("flipped byte in the merged statistics", "features",
           lambda s: _flip(_one(f"{s}/teachers/{T}/stats/patch_mean/c/0"), 0.3), f"teachers/{T}/stats/patch_mean"),
    Damage("manifest removed", "features", lambda s: _edit_root(s, lambda m: m["attributes"].pop("distillkit")),
           "distillkit"),
    Damage("manifest of an unknown schema", "features",
           lambda s: _edit_root(s, lambda m: m["attributes"]["distillkit"].update(schema_version="other/v9")),
           "schema_version"),
]
SCENE_DAMAGE = [
    Damage("scene root zarr.json truncated", "scenes", lambda s: _truncate_json(str(s / "zarr.json")), "zarr.json"),
    Damage("pointmap array zarr.json truncated", "scenes",
           lambda s: _truncate_json(_one(f"{s}/scenes/*/pts3d/zarr.json")), "pts3d/zarr.json"),
    Damage("unknown codec in the confidence array", "scenes", lambda s: _codec(_one(f"{s}/scenes/*/conf/zarr.json")),
           "conf/zarr.json"),
    Damage("flipped byte in the pointmaps", "scenes", lambda s: _flip(_one(f"{s}/scenes/*/pts3d/c/0/0/0/0")),
           "pts3d"),
    Damage("flipped byte in the images", "scenes", lambda s: _flip(_one(f"{s}/scenes/*/image/c/0/0/0/0")),
           "image"),
    Damage("confidence object deleted", "scenes", lambda s: os.remove(_one(f"{s}/scenes/*/conf/c/0/0/0")),
           "conf"),
    Damage("pointmap object deleted", "scenes", lambda s: os.remove(_one(f"{s}/scenes/*/pts3d/c/0/0/0/0")),
           "pts3d"),
]

# verb -> (store kind, argv for (store, out), exit code on a finding, the damages it must refuse or report)
DUNE = ["--preset", "custom", "--embed-dim", "32", "--depth", "1", "--heads", "2", "--max-steps", "3",
        "--batch-size", "4", "--num-workers", "0", "--device", "cpu"]
# readers open a store through its consolidated metadata snapshot (one request on S3): an array's own zarr.json is
# not what they read, so damage there is `validate`'s and `inspect`'s to name; the data they read is intact
ARRAY_METADATA = {"patch array zarr.json truncated", "unknown codec in the CLS array", "unknown codec in the image array",
                  "pointmap array zarr.json truncated", "unknown codec in the confidence array"}
METADATA = {"root zarr.json truncated", "patch array zarr.json truncated", "unknown codec in the CLS array",
            "unknown codec in the image array", "manifest removed", "manifest of an unknown schema",
            "scene root zarr.json truncated", "pointmap array zarr.json truncated",
            "unknown codec in the confidence array"}
VERBS: dict[str, tuple[str, Callable[[Path, Path], list[str]], int, Callable[[Damage], bool]]] = {
    # the quick check reads the targets but not the images: a damaged image's checksum is `--deep`'s job
    "validate": ("any", lambda s, o: ["validate", str(s)], 1,
                 lambda d: d.name not in ("flipped byte in an image shard", "flipped byte in the images")),
    "validate --deep": ("any", lambda s, o: ["validate", str(s), "--deep"], 1, lambda d: True),
    "inspect": ("any", lambda s, o: ["inspect", str(s)], 2, lambda d: d.name in METADATA),
    # (training reads validity from the sample index, not samples/valid, and the default PHI-S normalisation does
    # not read the merged statistics: damage there does not reach the student)
    "train": ("features", lambda s, o: ["train", "--store", str(s), "--out", str(o), *DUNE], 2,
              lambda d: d.name not in ARRAY_METADATA | {"flipped byte in the merged statistics",
                                                         "validity shard deleted"}),
    "train --task pointmap": ("scenes", lambda s, o: ["train", "--task", "pointmap", "--store", str(s), "--out",
                                                      str(o), "--device", "cpu", "--max-steps", "2"], 2,
                              lambda d: d.name not in ARRAY_METADATA),
    "export-ply": ("scenes", lambda s, o: ["export-ply", str(s), "--out", str(o / "cloud.ply")], 2,
                   lambda d: d.name not in ARRAY_METADATA),
}
CASES = [(v, d) for v, (kind, _, _, applies) in VERBS.items() for d in FEATURE_DAMAGE + SCENE_DAMAGE
         if kind in ("any", d.kind) and applies(d)]


def _snapshot(root: Path) -> dict[str, tuple[str, int]]:
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            what = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            out[str(p.relative_to(root))] = (what, p.lstat().st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def scene_store(tmp_path_factory) -> Path:
    """A scene store written by this version (checksummed arrays): one synthetic 7-Scenes scene, GT-depth pairs."""
    tmp = tmp_path_factory.mktemp("damaged_scenes")
    r = runner.invoke(app, ["synth-scenes", str(tmp / "ds"), "--scenes", "1", "--frames", "5", "--color", "96x128",
                            "--depth", "48x64", "--layout", "7scenes"])
    assert r.exit_code == 0, r.output
    (tmp / "s.yaml").write_text(f"source: {tmp / 'ds'}\nstore: {tmp / 'scenes.zarr'}\npredictor: gt-depth\n"
                                "image_size: 64\ngraph: complete\ndevice: cpu\n"
                                "align: {pose_pixels: 1024, max_iters: 10}\n")
    r = runner.invoke(app, ["cache-scenes", "-c", str(tmp / "s.yaml")])
    assert r.exit_code == 0, r.output
    return tmp / "scenes.zarr"


def test_the_corpus_covers_every_verb_and_both_kinds():
    assert len(CASES) >= 60 and {v for v, _ in CASES} == set(VERBS)
    assert {d.kind for _, d in CASES} == {"features", "scenes"}


@pytest.mark.parametrize("verb,damage", CASES, ids=[f"{v}-{d.name}".replace(" ", "_") for v, d in CASES])
def test_damage_is_named_and_nothing_is_written(verb, damage, cached_store, scene_store, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    store = work / "store.zarr"
    shutil.copytree(cached_store if damage.kind == "features" else scene_store, store)
    damage.apply(store)
    before = _snapshot(work)
    _, argv, finding, _ = VERBS[verb]
    r = runner.invoke(app, argv(store, work / "out"))
    said = " ".join(r.output.split())
    assert r.exit_code == (1 if verb.startswith("validate") else finding), (r.exit_code, said)
    assert damage.names in said, said
    assert "Traceback" not in r.output
    out = work / "out"
    if out.is_dir() and not any(out.iterdir()):  # damage found mid-read: the run stops before its first write
        out.rmdir()
    assert _snapshot(work) == before  # not a byte of the store, nothing beside it (no checkpoint, no PLY)
