"""A recording whose last row was cut short: readers stop at the last row marked ``complete``.

``formats/limits.py`` ``trusted_rows``: a row counts only "when it is not past the last row marked
complete (rows after it were never written, or cut short)"; ``sinks/recorder.py``: "``complete`` is
resized and set last, after the frame is written, so a live reader or a reader of a crashed file
trusts exactly ``len(complete)`` frames". A writer killed between a row's columns and its ``complete``
leaves every column one row longer, with ``complete`` 0 there. Mutation audit (round 2, LM2): with the
walk back to the last marked row removed, that half-written row was read and exported as a frame, and
no test noticed. Real Recorder files, the cut made with h5py as a crash leaves it.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from sbd_stream.config import RecordSettings
from sbd_stream.formats.limits import trusted_rows
from sbd_stream.formats.recording import iter_recorded
from sbd_stream.metrics import Metrics
from sbd_stream.sinks.export import export
from sbd_stream.sinks.recorder import Recorder, RecordItem

pytestmark = pytest.mark.integration

N = 3
COLUMNS = ("frame", "time", "seq", "ts", "complete")


def _cut_recording(directory: Path, compression: str) -> Path:
    """``N`` whole raw frames (values 1..N), then row ``N`` written in every column but not marked."""
    s = RecordSettings(directory=directory, min_free_bytes=0, compression=compression)
    rec = Recorder(s, Metrics())
    for q in range(N):
        rec.write(RecordItem("raw", "acq", q, 100.0 + q, np.full((16, 12), q + 1, np.uint16)))
    rec.close_all()
    (path,) = sorted(directory.glob("*.nxs"))
    with h5py.File(path, "r+") as f:
        g = f["raw"]
        for name in ("frames", *COLUMNS):
            if name in g:
                g[name].resize(N + 1, axis=0)
        g["frames"][N] = np.full((16, 12), 99, np.uint16)  # the pixels made it to disk ...
        g["seq"][N], g["ts"][N] = N, 100.0 + N
        if "time" in g:
            g["time"][N] = float(N)
        g["complete"][N] = 0  # ... the row was never marked complete
        assert all(g[name].shape[0] == N + 1 for name in ("frames", *COLUMNS) if name in g)
    return path


@pytest.mark.timeout(60)
@pytest.mark.parametrize("compression", ["none", "bitshuffle-lz4"])
def test_readers_stop_at_the_last_row_marked_complete(tmp_path: Path, compression: str) -> None:
    path = _cut_recording(tmp_path / "rec", compression)
    with h5py.File(path, "r") as f:
        assert trusted_rows(f["raw"], f"{path}: raw") == N

    got = list(iter_recorded(path))
    assert [seq for _, seq, _, _ in got] == list(range(N))
    assert [int(fr[0, 0]) for *_, fr in got] == [1, 2, 3]  # never the cut row's 99

    summary = export(path, "npy", kind="raw", out=tmp_path / "out.npy")
    assert summary["frames"] == N and summary["last_seq"] == N - 1
    arr = np.load(summary["output"])
    assert arr.shape == (N, 16, 12) and arr[:, 0, 0].tolist() == [1, 2, 3]
    side = json.loads(Path(summary["sidecar"]).read_text())
    assert side["frame_numbers"] == list(range(N))
