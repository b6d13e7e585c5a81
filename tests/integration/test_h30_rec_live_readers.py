"""A reader holding a recording part open in another process (a viewer following it live, a researcher's
h5py session, ``sbd-stream export`` of a closed part) must not stop the recording (audit h30).

Every part is opened read-write outside SWMR mode after readers can see it: when it gains its
``denoised`` / ``llr`` group (the file is closed and reopened), and when a closed part is reopened for
late outputs. With HDF5's default file lock that open failed with ``BlockingIOError`` while any other
process held the file, SWMR readers included; the recorder counted an I/O error and dropped every later
frame of that acquisition. Real files, a real second process holding them with plain h5py.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from sbd_stream.config import RecordSettings
from sbd_stream.metrics import Metrics
from sbd_stream.sinks.recorder import Recorder, RecordItem, open_recording

pytestmark = pytest.mark.integration

HOLDER = textwrap.dedent(
    """
    import sys, h5py, hdf5plugin
    f = h5py.File(sys.argv[1], "r", swmr=sys.argv[2] == "swmr")  # HDF5's default file locking
    print(len(f["raw/complete"]), flush=True)
    sys.stdin.readline()
    for name in ("frames", "seq", "complete"):
        if f.swmr_mode:
            f["raw/" + name].refresh()
    n = len(f["raw/complete"])
    print(n, [int(f["raw/frames"][i][0, 0]) for i in range(n)], flush=True)
    """
)


class Holder:
    """Another process holding ``path`` open for reading until ``release``."""

    def __init__(self, path: Path, swmr: bool) -> None:
        args = [sys.executable, "-c", HOLDER, str(path), "swmr" if swmr else "plain"]
        self.p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.p.stdout is not None
        self.rows_at_open = int(self.p.stdout.readline())

    def release(self) -> str:
        out, _ = self.p.communicate("go\n", timeout=60)
        assert self.p.returncode == 0
        return out.strip()


def _frame(seq: int, dtype: type = np.uint16) -> np.ndarray:
    a = np.full((8, 8), 3, dtype)
    a[0, 0] = seq
    return a


def _recorder(tmp_path: Path) -> tuple[Recorder, Metrics]:
    m = Metrics()
    return Recorder(RecordSettings(directory=tmp_path, min_free_bytes=0, compress_threads=0), m), m


def _no_losses(m: Metrics) -> None:
    assert m.value("sbd_record_errors_total", {"kind": "io"}) == 0
    assert m.value("sbd_record_dropped_total") == 0


def test_a_live_swmr_reader_does_not_stop_the_recording_when_outputs_arrive(tmp_path: Path) -> None:
    rec, m = _recorder(tmp_path)
    for seq in (0, 1):
        rec.write(RecordItem("raw", "a", seq, 100.0 + seq, _frame(seq)))
    holder = Holder(tmp_path / "a.nxs", swmr=True)  # a viewer follows the part live
    assert holder.rows_at_open == 2
    for seq in (0, 1):  # the first denoised frame and llr map add their groups
        rec.write(RecordItem("denoised", "a", seq, 100.0 + seq, _frame(seq, np.float32)))
        rec.write(RecordItem("llr", "a", seq, 100.0 + seq, _frame(seq, np.float32)))
    for seq in (2, 3):
        rec.write(RecordItem("raw", "a", seq, 100.0 + seq, _frame(seq)))
    seen = holder.release()
    rec.close_all()
    _no_losses(m)
    assert seen == "4 [0, 1, 2, 3]"  # the held handle follows the raw rows written after the reopen
    with open_recording(tmp_path / "a.nxs") as f:
        assert list(f["raw/seq"]) == [0, 1, 2, 3]
        for kind in ("denoised", "llr"):
            assert list(f[f"{kind}/seq"]) == [0, 1]
            assert [int(f[f"{kind}/frames"][i][0, 0]) for i in range(2)] == [0, 1]


def test_a_closed_part_held_by_a_reader_still_takes_its_late_outputs(tmp_path: Path) -> None:
    rec, m = _recorder(tmp_path)
    rec.write(RecordItem("raw", "a", 0, 100.0, _frame(0)))
    rec.write(RecordItem("denoised", "a", 0, 100.0, _frame(0, np.float32)))
    rec.write(RecordItem("raw", "a", 1, 101.0, _frame(1)))
    rec.close("a")  # closed (idle, max_open_files), its complete-lane output still to come
    holder = Holder(tmp_path / "a.nxs", swmr=False)  # e.g. `sbd-stream export` of the closed part
    rec.write(RecordItem("denoised", "a", 1, 101.0, _frame(1, np.float32)))  # reopens the part
    holder.release()
    rec.close_all()
    _no_losses(m)
    with open_recording(tmp_path / "a.nxs") as f:
        assert list(f["denoised/seq"]) == [0, 1]
        np.testing.assert_array_equal(f["denoised/frames"][1], _frame(1, np.float16))
