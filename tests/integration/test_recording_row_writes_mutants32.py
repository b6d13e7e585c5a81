"""Mutation round of session 32 on ``formats/row_writes.py``: per-row values that float64 cannot carry.

Why: each per-row dataset's value goes through a buffer of that dataset's own dtype (row_writes.py). The
first tests' values (row numbers, seq up to ~12600, times) all fit a float64 exactly, so a buffer of one
shared float dtype passed them; a detector's seq is a 64-bit counter, and past 2^53 a float64 buffer
rounds it, silently naming the wrong frame in every reader. Its value must reach the file bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from sbd_stream.config import RecordSettings
from sbd_stream.formats.recording import AcqFile

T0 = 1.7e9


def test_a_64_bit_seq_and_an_exact_timestamp_are_recorded_bit_for_bit(tmp_path: Path) -> None:
    s = RecordSettings(directory=tmp_path, compression="none")
    path = tmp_path / "seq.nxs"
    seqs = [2**53 + 1, 2**62 + 3, 2**63 - 1]
    af = AcqFile(path, (4, 4), np.uint16, s, {"acq": "seq", "created": T0, "t0": T0})
    for i, seq in enumerate(seqs):
        af.append("raw", seq, T0 + 0.1 * i, np.zeros((4, 4), np.uint16))
        af.append("denoised", seq, T0 + 0.1 * i, np.zeros((4, 4), np.float32), blank=1)
    af.close()
    with h5py.File(path, "r") as f:
        for kind in ("raw", "denoised"):
            got = f[kind]["seq"][:]
            assert got.dtype == np.int64
            assert [int(v) for v in got] == seqs, kind
            assert list(f[kind]["complete"][:]) == [1, 1, 1]
        assert list(f["denoised"]["blank"][:]) == [1, 1, 1]
