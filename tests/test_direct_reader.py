"""The direct shard reader against zarr-python on stores written by zarr's own codecs: same values for every codec
list distillkit writes, crc32c verified per row and per shard index, a damaged byte named by array, shard and row.

Torch-free on purpose: `make test` also runs this file under the newest zarr (see the Makefile)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from distillkit.store import direct
from distillkit.store.checksum import crc32c
from distillkit.store.direct import ChecksumError, DirectShardReader

CODECS = {
    "bytes": None,
    "zstd": [ZstdCodec(level=1)],
    "bytes+crc32c": [Crc32cCodec()],
    "zstd+crc32c": [ZstdCodec(level=1), Crc32cCodec()],
}
ROWS, SHARD = 10, 4  # 3 shards, the last one short


def make(root: Path, compressors, dtype="float32", name="teachers/t/patch", store=None) -> tuple[zarr.Array,
                                                                                                 np.ndarray]:
    g = zarr.open_group(store if store is not None else str(root / "s.zarr"), mode="w")
    arr = g.create_array(name, shape=(ROWS, 3, 5), dtype=dtype, chunks=(1, 3, 5), shards=(SHARD, 3, 5),
                         compressors=compressors, fill_value=np.nan if dtype.startswith("float") else 0,
                         config={"write_empty_chunks": True})
    values = (np.random.default_rng(0).standard_normal((ROWS, 3, 5)) * 100).astype(dtype)
    arr[:8] = values[:8]  # shard 2 is only half written: its rows 8-9 are fill
    return arr, values


def read_all(r: DirectShardReader) -> np.ndarray:
    return np.concatenate([r.read_shard(s) for s in range(3)])


def shard_file(root: Path, name: str, s: int) -> Path:
    return root / "s.zarr" / name / "c" / str(s) / "0" / "0"


@pytest.mark.parametrize("codec", list(CODECS))
def test_same_values_as_zarr(tmp_path, codec):
    arr, _ = make(tmp_path, CODECS[codec])
    r = DirectShardReader(arr)
    assert r.row_crc == codec.endswith("crc32c") and r.index_crc  # zarr's default index codecs: bytes + crc32c
    np.testing.assert_array_equal(read_all(r), arr[:])


def test_big_endian_and_integer_rows(tmp_path):
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    from zarr.codecs import BytesCodec

    arr = g.create_array("x", shape=(ROWS, 7), dtype="int16", chunks=(1, 7), shards=(SHARD, 7),
                         serializer=BytesCodec(endian="big"), compressors=[Crc32cCodec()])
    arr[:] = np.arange(ROWS * 7, dtype="int16").reshape(ROWS, 7) - 30
    np.testing.assert_array_equal(read_all(DirectShardReader(arr)), arr[:])


def test_checksum_is_zarr_crc32c(tmp_path):
    """Our check accepts exactly what zarr's crc32c codec wrote: Castagnoli CRC of the bytes, little-endian."""
    arr, values = make(tmp_path, [Crc32cCodec()])
    blob = shard_file(tmp_path, arr.path, 0).read_bytes()
    row = np.frombuffer(blob, np.uint8)[:15 * 4 + 4]
    assert crc32c(row[:-4]) == int.from_bytes(row[-4:].tobytes(), "little")
    assert crc32c(np.frombuffer(b"123456789", np.uint8)) == 0xE3069283  # the CRC-32C check value
    np.testing.assert_array_equal(row[:-4].view("<f4"), values[0].reshape(-1))


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("codec", ["bytes+crc32c", "zstd+crc32c"])
def test_damaged_row_names_array_shard_and_row(tmp_path, codec):
    arr, values = make(tmp_path, CODECS[codec])
    path = shard_file(tmp_path, arr.path, 1)
    index = np.frombuffer(path.read_bytes()[-(SHARD * 16 + 4):-4], "<u8").reshape(-1, 2)
    flip(path, int(index[1, 0]) + 3)  # a byte of the second row of shard 1 = sample 5
    with pytest.raises(ChecksumError, match=r"teachers/t/patch: shard 1, row 5 \(sample index\): crc32c"):
        DirectShardReader(arr).read_shard(1)
    with pytest.raises(ValueError):  # zarr refuses the same bytes: the two agree on what is damaged
        arr[5]
    np.testing.assert_array_equal(DirectShardReader(arr).read_shard(0), arr[:4])  # other shards still read
    if codec == "bytes+crc32c":  # verify=False skips the check (and serves the damaged row)
        got = DirectShardReader(arr, verify=False).read_shard(1)
        assert not np.array_equal(got[1], values[5])
        np.testing.assert_array_equal(got[[0, 2, 3]], values[[4, 6, 7]])


def test_damaged_index_is_named(tmp_path):
    arr, _ = make(tmp_path, [Crc32cCodec()])
    path = shard_file(tmp_path, arr.path, 1)
    flip(path, path.stat().st_size - 20)  # inside the index (the last 4 bytes are its checksum)
    with pytest.raises(ChecksumError, match=r"teachers/t/patch: shard 1, shard index: crc32c checksum mismatch"):
        DirectShardReader(arr).read_shard(1)
    with pytest.raises(ValueError):
        arr[4:8]


def test_truncated_shard_is_an_error_not_garbage(tmp_path):
    arr, _ = make(tmp_path, [Crc32cCodec()])
    path = shard_file(tmp_path, arr.path, 0)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ChecksumError, match="shard 0"):
        DirectShardReader(arr).read_shard(0)


def test_missing_shard_reads_fill(tmp_path):
    arr, _ = make(tmp_path, [Crc32cCodec()])
    shard_file(tmp_path, arr.path, 1).unlink()
    got = DirectShardReader(arr).read_shard(1)
    assert got.shape == (4, 3, 5) and np.isnan(got).all()


def test_non_local_store_goes_through_zarr_store_api(tmp_path):
    """A zarr MemoryStore (not a local directory): shards are fetched with the store's own `get`."""
    arr, _ = make(tmp_path, [ZstdCodec(level=1), Crc32cCodec()], store=zarr.storage.MemoryStore())
    np.testing.assert_array_equal(read_all(DirectShardReader(arr)), arr[:])


def test_without_zarr_sync_bridge_falls_back_with_a_note(tmp_path, monkeypatch, caplog):
    """A zarr release without `zarr.core.sync`: non-local stores are read by zarr, and the log says so."""
    arr, _ = make(tmp_path, [Crc32cCodec()], store=zarr.storage.MemoryStore())
    monkeypatch.setattr(direct, "_sync", None)
    monkeypatch.setattr(direct, "_NOTED", set())
    with caplog.at_level(logging.WARNING, logger="distillkit"):
        assert DirectShardReader.maybe(arr) is None
    assert "read through zarr" in caplog.text and zarr.__version__ in caplog.text
    local, _ = make(tmp_path, [Crc32cCodec()])
    assert DirectShardReader.maybe(local) is not None  # local stores need no zarr internals


def test_a_changed_zarr_sync_bridge_falls_back_to_zarr_at_read_time(tmp_path, monkeypatch, caplog):
    arr, _ = make(tmp_path, [Crc32cCodec()], store=zarr.storage.MemoryStore())
    reader = DirectShardReader(arr)

    def changed(coro, *args, **kwargs):
        coro.close()
        raise TypeError("sync() got an unexpected keyword argument")

    monkeypatch.setattr(direct, "_sync", changed)
    monkeypatch.setattr(direct, "_NOTED", set())
    with caplog.at_level(logging.WARNING, logger="distillkit"):
        np.testing.assert_array_equal(np.concatenate([reader.read_shard(s) for s in range(3)]), arr[:])
    assert caplog.text.count("read through zarr") == 1 and "TypeError" in caplog.text


def test_layouts_it_does_not_know_are_left_to_zarr(tmp_path):
    blosc, _ = make(tmp_path, [BloscCodec(cname="lz4")])
    assert DirectShardReader.maybe(blosc) is None
    g = zarr.open_group(str(tmp_path / "u.zarr"), mode="w")
    assert DirectShardReader.maybe(g.create_array("u", shape=(4, 2), dtype="f4", chunks=(1, 2))) is None
    two_rows = g.create_array("r", shape=(8, 2), dtype="f4", chunks=(2, 2), shards=(4, 2))
    assert DirectShardReader.maybe(two_rows) is None


def make_cls(root: Path, compressors, store=None) -> zarr.Array:
    """An unsharded [N, C] array chunked in whole shards of rows, like the CLS tokens."""
    g = zarr.open_group(store if store is not None else str(root / "c.zarr"), mode="w")
    arr = g.create_array("teachers/t/cls", shape=(ROWS, 6), dtype="float16", chunks=(SHARD, 6),
                         compressors=compressors, fill_value=np.nan)
    arr[:8] = (np.random.default_rng(1).standard_normal((8, 6)) * 10).astype("float16")  # chunk 2 never written
    return arr


@pytest.mark.parametrize("codec", list(CODECS))
def test_chunk_reader_same_values_as_zarr(tmp_path, codec):
    arr = make_cls(tmp_path, CODECS[codec])
    r = direct.direct_reader(arr)
    assert isinstance(r, direct.DirectChunkReader) and r.crc == codec.endswith("crc32c")
    got = np.concatenate([r.read_shard(s) for s in range(3)])
    assert got.shape == (ROWS, 6) and got.dtype == np.float16
    np.testing.assert_array_equal(got, arr[:])  # the unwritten, short last chunk reads as fill
    mem = make_cls(tmp_path, CODECS[codec], store=zarr.storage.MemoryStore())
    np.testing.assert_array_equal(np.concatenate([direct.direct_reader(mem).read_shard(s) for s in range(3)]), mem[:])


def test_chunk_reader_names_a_damaged_chunk(tmp_path):
    arr = make_cls(tmp_path, [ZstdCodec(level=1), Crc32cCodec()])
    flip(tmp_path / "c.zarr" / arr.path / "c" / "1" / "0", 5)
    with pytest.raises(ChecksumError, match=r"teachers/t/cls: chunk 1: crc32c checksum mismatch"):
        direct.direct_reader(arr).read_shard(1)
    with pytest.raises(ValueError):  # zarr refuses the same bytes
        arr[4:8]
    np.testing.assert_array_equal(direct.direct_reader(arr).read_shard(0), arr[:4])


def test_chunk_reader_leaves_other_layouts_to_zarr(tmp_path):
    g = zarr.open_group(str(tmp_path / "o.zarr"), mode="w")
    assert direct.direct_reader(g.create_array("b", shape=(8, 2), dtype="f4", chunks=(4, 2),
                                               compressors=[BloscCodec(cname="lz4")])) is None
    assert direct.direct_reader(g.create_array("cols", shape=(8, 4), dtype="f4", chunks=(4, 2))) is None
    assert direct.direct_reader(g.create_array("s2", shape=(4, 2), dtype=str, chunks=(2, 2))) is None


@pytest.mark.parametrize("compressors", [[], [ZstdCodec(level=3), Crc32cCodec()], [Crc32cCodec()]])
def test_string_columns_are_read_directly_as_zarr_reads_them(tmp_path, compressors):
    g = zarr.open_group(str(tmp_path / "o.zarr"), mode="w")
    values = np.array(["a/img_0.png", "", "dé/ünï.jpg", "z" * 300, "b"], dtype=np.dtypes.StringDType())
    arr = g.create_array("s", shape=(5,), dtype=str, chunks=(2,), compressors=compressors, fill_value="")
    arr[:] = values
    reader = direct.direct_reader(arr)
    assert isinstance(reader, direct.DirectChunkReader)
    got = np.concatenate([reader.read_shard(s) for s in range(3)])  # the last chunk is short
    assert got.dtype == values.dtype and got.tolist() == values.tolist()
    if compressors == [Crc32cCodec()]:  # a flipped byte: the checksum says so
        path = tmp_path / "o.zarr" / "s" / "c" / "1"
        raw = bytearray(path.read_bytes())
        raw[6] ^= 1
        path.write_bytes(bytes(raw))
        with pytest.raises(ChecksumError, match="chunk 1"):
            reader.read_shard(1)
