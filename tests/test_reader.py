"""Streaming reader: coverage across workers and ranks, shuffling, exact resume, sample-id zipping."""

from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import pytest
import zarr

from distillkit.store.reader import ShardStream, StoreSource, make_loader


def _epoch_ids(store, epoch, rank, world, workers, batch_size=3, split="all", start=0):
    stream = ShardStream([StoreSource(str(store))], batch_size, split, seed=5, rank=rank, world=world)
    return [b["ids"] for b in make_loader(stream, workers, epoch=epoch, start_batch=start)]


def test_every_sample_exactly_once_per_epoch_across_2_workers_and_2_ranks(cached_store):
    src = StoreSource(str(cached_store))
    expected = set(src.ids[src.valid].tolist())
    orders = []
    for epoch in (0, 1):
        seen = Counter()
        per_rank = []
        for rank in (0, 1):
            batches = _epoch_ids(cached_store, epoch, rank, 2, workers=2)
            ids = [i for b in batches for i in b]
            per_rank.append(set(ids))
            seen.update(ids)
        assert set(seen) == expected and all(c == 1 for c in seen.values())
        assert not per_rank[0] & per_rank[1]  # ranks are disjoint
        orders.append([i for r in (0, 1) for b in _epoch_ids(cached_store, epoch, r, 2, 2) for i in b])
    assert orders[0] != orders[1]  # reshuffled per epoch
    assert orders[0] == [i for r in (0, 1) for b in _epoch_ids(cached_store, 0, r, 2, 2) for i in b]  # seeded


def test_batches_carry_aligned_data(cached_store):
    g = zarr.open_group(str(cached_store), mode="r")
    ids = g["samples/id"][:].tolist()
    stream = ShardStream([StoreSource(str(cached_store))], 4, "all", seed=1)
    for batch in make_loader(stream, 2):
        for j, sid in enumerate(batch["ids"]):
            row = ids.index(sid)
            assert int(batch["rows"][j]) == row
            np.testing.assert_array_equal(batch["teachers/dinov2_vits14_reg/patch"][j].numpy(),
                                          g["teachers/dinov2_vits14_reg/patch"][row])
            np.testing.assert_array_equal(batch["samples/image"][j].numpy(), g["samples/image"][row])


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_continues_the_exact_sample_order(cached_store, workers):
    full = _epoch_ids(cached_store, 3, 0, 1, workers, batch_size=2)
    assert len(full) >= 5
    for k in (1, 2, 3, len(full) - 1):
        assert _epoch_ids(cached_store, 3, 0, 1, workers, batch_size=2, start=k) == full[k:]


def test_splits_are_disjoint(cached_store):
    train = {i for b in _epoch_ids(cached_store, 0, 0, 1, 0, split="train") for i in b}
    val = {i for b in _epoch_ids(cached_store, 0, 0, 1, 0, split="val") for i in b}
    assert train and val and not train & val


@pytest.mark.parametrize("chunk", [None, 8])
def test_zipping_stores_checks_sample_ids(cached_store, tmp_path, monkeypatch, chunk):
    """Ids are compared a chunk of the table at a time (8 rows: the mismatch lies in the second chunk)."""
    from distillkit.store import source

    if chunk:
        monkeypatch.setattr(source, "TABLE_ROWS", chunk)
    other = tmp_path / "other.zarr"
    shutil.copytree(cached_store, other)
    g = zarr.open_group(str(other), mode="r+", use_consolidated=False)
    ids = g["samples/id"][:12].tolist()
    ids[10] = "someone_else.jpg"
    g["samples/id"][:12] = np.array(ids)
    g[g.attrs["distillkit"]["sample_index"] + "/id"][:12] = np.array(ids)  # what readers open the table from
    with pytest.raises(ValueError, match="not aligned: sample 10 is .* and 'someone_else.jpg' in the other"):
        ShardStream([StoreSource(str(cached_store)), StoreSource(str(other), teachers=[])], 2)
    same = tmp_path / "same.zarr"
    shutil.copytree(cached_store, same)
    first = StoreSource(str(cached_store))
    stream = ShardStream([first, StoreSource(str(same), teachers=[])], 2)
    assert stream.n_usable > 0 and first.aligned == {str(same)}


def test_incomplete_store_is_refused(cached_store, tmp_path):
    other = tmp_path / "partial.zarr"
    shutil.copytree(cached_store, other)
    g = zarr.open_group(str(other), mode="r+", use_consolidated=False)
    man = dict(g.attrs["distillkit"], status="in_progress")
    g.attrs["distillkit"] = man
    zarr.consolidate_metadata(str(other))
    with pytest.raises(ValueError, match="not complete"):
        StoreSource(str(other))


_UNWRAPPED_READ = StoreSource.read


def _reads_of_an_eval(store, k: int, monkeypatch) -> tuple[list[tuple[str, int]], int]:
    """(the (array, shard) reads of evaluating k held-out samples as training does, samples evaluated)."""
    from types import SimpleNamespace

    from distillkit.training.dune.data import Group, val_streams

    reads = []
    real = _UNWRAPPED_READ
    monkeypatch.setattr(StoreSource, "read", lambda self, name, a, b: reads.append((name, a)) or real(self, name, a, b))
    src = StoreSource(str(store))
    cfg = SimpleNamespace(batch_size=4, max_eval_samples=k)
    [(stream, _)] = val_streams(cfg, [Group("all", [src], None, None)])
    samples = sum(len(b["ids"]) for b in make_loader(stream, 0))
    return reads, samples


def test_evaluation_reads_only_the_shards_of_the_samples_it_evaluates(cached_store, photos, tmp_path, monkeypatch):
    from conftest import tiny_cache_config

    from distillkit.cache import run_cache

    # a store 3x larger whose first samples are the small store's (the copies' ids sort after them)
    source = tmp_path / "src"
    shutil.copytree(photos, source)
    for copy in ("zz1", "zz2"):
        shutil.copytree(photos, source / copy)
    big = tmp_path / "big.zarr"
    run_cache(tiny_cache_config(source, big), show_progress=False)
    small_reads, n_small = _reads_of_an_eval(cached_store, 2, monkeypatch)
    big_reads, n_big = _reads_of_an_eval(big, 2, monkeypatch)
    assert n_small == n_big == 2
    assert small_reads and sorted(big_reads) == sorted(small_reads)  # O(samples evaluated), not O(store)
    assert len({a for _, a in big_reads}) < StoreSource(str(big)).manifest.n_samples // 4  # not every shard


def test_sample_ids_are_one_buffer_decoded_on_access():
    import pickle

    from distillkit.store.ids import SampleIds

    values = ["a/img_0.png", "", "dé/ünï.jpg", "z" * 40, "b/img_1.png"]
    ids = SampleIds.of(np.array(values, dtype=np.dtypes.StringDType()))
    assert len(ids) == 5 and [ids[i] for i in range(5)] == values and ids[-1] == values[-1] and ids.tolist() == values
    assert ids[np.array([True, False, True, False, True])].tolist() == values[::2]
    assert ids[np.array([3, 0])].tolist() == [values[3], values[0]] and ids[1:3].tolist() == values[1:3]
    assert ids.nbytes == sum(len(v.encode()) for v in values) + 8 * 6  # bytes + offsets: no object per id
    assert len(pickle.dumps(ids, protocol=5)) < ids.nbytes + 400
    other = SampleIds.of(values[:2] + ["x", *values[3:]])
    assert ids.differs(ids).tolist() == [] and ids.differs(other).tolist() == [2]
    assert ids.differs(SampleIds.of(values[:3])).tolist() == [3, 4]
    with pytest.raises(IndexError, match="row 5 out of range"):
        ids[5]


def test_epoch_planning_builds_each_blocks_rows_when_reached_and_ships_no_plan(cached_store, monkeypatch):
    import pickle

    built = []
    real = ShardStream._block_rows
    monkeypatch.setattr(ShardStream, "_block_rows", lambda self, *a: built.append(a[:2]) or real(self, *a))
    stream = ShardStream([StoreSource(str(cached_store))], 2, "all", seed=1, shuffle_shards=1)
    for _ in range(4):  # what the trainer asks before its first step: counts and order come from per-shard counts
        stream.batches_per_epoch(0)
        stream.position(0, 2, 3)
    assert built == []
    stream.num_workers = 1
    batches = iter(stream)
    next(batches)
    assert len(built) == 1  # the first block's rows only, not the epoch's
    rest = list(batches)
    assert sorted(b for _, b in built) == [0, 1, 2] and 1 + len(rest) == stream.batches_per_epoch(0)
    assert pickle.loads(pickle.dumps(stream))._plans == {}  # a worker plans its own share

def test_resume_position_is_the_round_robins(monkeypatch):
    """`position` (arithmetic on the workers' batch counts) agrees with playing the DataLoader's round-robin out,
    batch by batch, for every start of many random epochs."""
    import random
    from collections import Counter

    def round_robin(counts):
        left, order = list(counts), []
        while any(left):
            for w in range(len(left)):
                if left[w]:
                    order.append(w)
                    left[w] -= 1
        return order

    stream = ShardStream.__new__(ShardStream)
    rng = random.Random(0)
    for _ in range(500):
        counts = [rng.randint(0, 6) for _ in range(rng.randint(1, 5))]
        monkeypatch.setattr(ShardStream, "worker_batch_counts", lambda self, epoch, w, c=counts: list(c))
        order = round_robin(counts)
        for start in range(len(order) + 2):
            seen = Counter(order[:start])
            want = ([seen[w] for w in range(len(counts))], order[start] if start < len(order) else 0)
            assert stream.position(0, len(counts), start) == want, (counts, start)


def test_row_bits_agree_with_bool_arrays(monkeypatch):
    """The reader's per-sample flags as bits: ranges, per-shard counts, the first k set and keeping only those,
    against plain bool arrays, for sizes and shard sizes that do not divide 8 nor the unpacking step."""
    from distillkit.store import rowbits

    monkeypatch.setattr(rowbits, "STEP", 64)  # many steps even for small n
    rng = np.random.default_rng(1)
    for n in (0, 1, 7, 8, 63, 64, 65, 1000, 5003):
        flags = rng.random(n) < 0.3
        bits = np.packbits(flags)
        for a, b in ((0, n), (n // 3, n // 2), (max(n - 5, 0), n)):
            np.testing.assert_array_equal(rowbits.rows(bits, a, b), flags[a:b])
        for size in (1, 3, 8, 64, 100):
            want = np.add.reduceat(flags.astype(int), np.arange(0, n, size)) if n else np.zeros(0, int)
            np.testing.assert_array_equal(rowbits.per_shard(bits, n, size), want)
        for k in (0, 1, 5, 10**9):
            np.testing.assert_array_equal(rowbits.first(bits, n, k), np.flatnonzero(flags)[:k])
            kept = flags.copy()
            kept[np.flatnonzero(flags)[k:]] = False
            np.testing.assert_array_equal(rowbits.rows(rowbits.keep_first(bits, n, k), 0, n), kept)
