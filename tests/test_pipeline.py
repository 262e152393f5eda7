"""The staged caching pipeline: its stages overlap, it names the stage that limits it, a failing stage stops the run
cleanly with every completed shard intact, and the statistics are exact and reproducible."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zarr

from conftest import TINY_TEACHER, assert_same_files, tiny_cache_config
from distillkit.config.cache import TeacherConfig
from distillkit.features import shards as shards_mod
from distillkit.features.pipeline import run_cache
from distillkit.store import stats
from distillkit.teachers import load_teacher

pytestmark = pytest.mark.usefixtures("one_torch_thread")
NAME = TINY_TEACHER["name"]


class Wrapped:
    """The tiny teacher with a hook before each forward (to slow it down, record it or make it fail)."""

    def __init__(self, hook):
        self.real = load_teacher(TeacherConfig(**TINY_TEACHER), (56, 56), 14)
        self.provenance, self.device, self.hook, self.calls = self.real.provenance, self.real.device, hook, 0

    @property
    def input_hw(self):
        return self.real.input_hw

    def __call__(self, x):
        self.calls += 1
        self.hook(self.calls)
        return self.real(x)


def _files(store) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*"))
            if p.is_file() and p.name != "zarr.json"}


def test_stages_overlap_and_the_slowest_is_named(photos, tmp_path, monkeypatch):
    spans: dict[str, list[tuple[float, float]]] = {"decode": [], "teachers": []}
    lock = threading.Lock()
    real_decode = shards_mod.decode_sample

    def slow_decode(*a, **kw):
        t0 = time.perf_counter()
        out = real_decode(*a, **kw)
        with lock:
            spans["decode"].append((t0, time.perf_counter()))
        return out

    def slow_teacher(_):
        t0 = time.perf_counter()
        time.sleep(0.3)  # the teacher is by far the slowest stage
        spans["teachers"].append((t0, time.perf_counter()))

    monkeypatch.setattr(shards_mod, "decode_sample", slow_decode)
    cfg = tiny_cache_config(photos, tmp_path / "s.zarr", num_workers=1)
    result = run_cache(cfg, show_progress=False, teachers={NAME: Wrapped(slow_teacher)})
    assert result["bottleneck"] == "teachers"
    assert set(result["stages"]) == {"decode", "teachers", "finish", "write"}
    assert all(s["busy_s"] > 0 for s in result["stages"].values())
    overlapping = [d for d in spans["decode"] for t in spans["teachers"] if d[0] < t[1] and t[0] < d[1]]
    assert overlapping, "no image was decoded while the teacher ran: the stages ran one after another"


def test_a_failing_stage_stops_the_run_and_completed_shards_stay_intact(photos, tmp_path):
    reference = tmp_path / "reference.zarr"
    run_cache(tiny_cache_config(photos, reference), show_progress=False)
    store = tmp_path / "s.zarr"
    threads = threading.active_count()

    def fail_on_third(call):
        if call == 3:
            raise RuntimeError("teacher exploded")

    with pytest.raises(RuntimeError, match="teacher exploded"):
        run_cache(tiny_cache_config(photos, store), show_progress=False, teachers={NAME: Wrapped(fail_on_third)})
    time.sleep(0.2)
    assert threading.active_count() <= threads, "a stage's thread outlived the failed run"
    done = zarr.open_group(str(store), mode="r", use_consolidated=False)["progress/shard_done"][:]
    assert done.tolist()[:2] == [1, 1] and done[2] == 0  # shards 0 and 1 written whole, the third not marked
    ref = _files(reference)
    for path, data in _files(store).items():  # every object of a completed shard is the reference's own bytes
        if "/c/0" in path or "/c/1" in path:
            assert ref[path] == data, path
    run_cache(tiny_cache_config(photos, store), show_progress=False)  # the re-run finishes it: identical bytes
    assert_same_files(ref, _files(store))


def test_writer_failure_stops_the_run_with_the_shard_named(photos, tmp_path, monkeypatch):
    from distillkit.store import writer

    real = writer.write_shard

    def fail_shard_1(group, r):
        if r.shard == 1:
            raise OSError("disk on fire")
        real(group, r)

    monkeypatch.setattr(writer, "write_shard", fail_shard_1)
    with pytest.raises(RuntimeError, match="writing shard 1 failed: disk on fire"):
        run_cache(tiny_cache_config(photos, tmp_path / "s.zarr"), show_progress=False)
    done = zarr.open_group(str(tmp_path / "s.zarr"), mode="r", use_consolidated=False)["progress/shard_done"][:]
    assert done[0] == 1 and done[1] == 0


def test_statistics_are_exact_without_cancellation_and_reproducible():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((16, 64, 32)) * 0.01 + 300).astype(np.float16)  # mean far from zero, tiny spread
    n, mean, m2 = stats.partial(x)
    ref = x.astype(np.float64).reshape(-1, 32)
    assert n == 16 * 64
    np.testing.assert_allclose(mean, ref.mean(0), rtol=1e-12)
    np.testing.assert_allclose(np.sqrt(m2 / n), ref.std(0), rtol=1e-5)
    for offset in (1, 3, 8):  # other alignments, same values: the same bits
        moved = np.empty(x.size + offset, np.float16)[offset:].reshape(x.shape)
        moved[...] = x
        for a, b in zip(stats.partial(x)[1:], stats.partial(moved)[1:]):
            assert a.tobytes() == b.tobytes()
    stats._LOCAL.buf = np.empty(stats._LOCAL.buf.size + 5, np.float32)[5:]  # and another scratch alignment
    for a, b in zip(stats.partial(x)[1:], stats.partial(moved)[1:]):
        assert a.tobytes() == b.tobytes()


def test_the_finite_check_comes_with_the_statistics():
    x = np.ones((4, 9, 3), np.float16)
    x[1, 4, 2] = np.inf
    x[2, 0, 0] = np.nan  # the shift token itself
    big = np.full((2, 3, 3), 3e38, np.float32)  # finite float32 values whose float32 sum overflows
    assert stats.image_partials(x)[2].tolist() == [True, False, False, True]
    assert stats.image_partials(big)[2].tolist() == [True, True]


@pytest.mark.parametrize("shape,dtype", [((10, 3, 4), "f2"), ((10,), "u1"), ((7, 2, 5, 3), "u1"),
                                         ((9, 300, 1024), "f2")])  # the last: shards over 1 MiB (O_DIRECT)
def test_direct_shard_writes_are_zarrs_own_bytes(tmp_path, shape, dtype):
    """Shards written without zarr's codec pipeline (whole shards, last one short) are the objects zarr writes."""
    from zarr.codecs import Crc32cCodec

    from distillkit.store.direct_write import write_rows

    values = (np.random.default_rng(0).standard_normal(shape) * 50).astype(dtype)
    arrays = {}
    for how in ("zarr", "direct"):
        g = zarr.open_group(str(tmp_path / how), mode="w")
        a = g.create_array("x", shape=shape, chunks=(1, *shape[1:]), shards=(4, *shape[1:]), dtype=dtype,
                           compressors=[Crc32cCodec()], fill_value=0).with_config({"write_empty_chunks": True})
        for start in range(0, shape[0], 4):
            sl = slice(start, min(start + 4, shape[0]))
            if how == "zarr":
                a[sl] = values[sl]
            else:
                assert write_rows(a, sl.start, sl.stop, values[sl])
        arrays[how] = a
    assert_same_files(_files(tmp_path / "zarr"), _files(tmp_path / "direct"))
    np.testing.assert_array_equal(arrays["direct"][:], values)
    assert not write_rows(arrays["direct"], 1, 4, values[1:4])  # not a whole shard: left to zarr
