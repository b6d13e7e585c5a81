"""Files damaged on purpose, as a crafted input would be: shared by the crash tests of the HDF5 readers
(``test_damaged_chunk_cli``, ``test_crafted_row_columns``, ``test_crafted_emd_metadata``).

Why here: the hdf5plugin filters' unchecked LZ4 decoder trusted a block declaring 2 GB and killed the
process (SIGSEGV); each test builds a real file, crafts one chunk the same way and runs a command in a
subprocess, so a crash is a return code, never the test run dying.
"""

from __future__ import annotations

import struct
from pathlib import Path

from sbd_stream.config import RecordSettings
from sbd_stream.metrics import Metrics
from sbd_stream.sinks.recorder import Recorder

LEAP = 0x7FFFFFF0
"""The first block's declared compressed size: 2 GB, far past any chunk."""


def leap(chunk: bytes) -> bytes:
    """A bitshuffle-LZ4 chunk with its 12-byte header kept and its first block declaring 2 GB."""
    c = bytearray(chunk)
    struct.pack_into(">I", c, 12, LEAP)
    return bytes(c)


def small_recorder(directory: Path) -> Recorder:
    """The real Recorder, default (bitshuffle-LZ4) frames, no free-space floor, compressing inline."""
    return Recorder(
        RecordSettings(directory=directory, min_free_bytes=0, compress_threads=0),
        Metrics(), card={"name": "tiny"}, run_config={},
        sampling={"pixel_size_A": 0.06, "dose_e_per_A2": 125.0, "counts_per_px": 0.45},
    )  # fmt: skip
