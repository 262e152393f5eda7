"""crc32c (Castagnoli), the checksum of zarr's `crc32c` codec, computed by the `crc32c` package.

It uses the CPU's crc32 instruction (~4x faster than google-crc32c here: 1.2 vs 5.2 ms for a 25 MB shard) and
releases the GIL on large buffers, so that the shard readers' and writers' threads check in parallel (two threads:
1.4 ms for two shards, against 11 ms with google-crc32c, which holds the GIL). Measured on this 2-core machine.
"""

from __future__ import annotations

import crc32c as _impl
import numpy as np


def crc32c(buf: np.ndarray) -> int:
    """The checksum of a contiguous buffer."""
    return _impl.crc32c(buf)


def crc32c_bytes(buf: np.ndarray) -> bytes:
    """The 4 bytes zarr stores after the checksummed bytes (little-endian)."""
    return _impl.crc32c(buf).to_bytes(4, "little")
