"""Series boundaries as the service hands them to the recorder: the part closes, the clock starts again.

``sinks/record_item.py`` ``RecordItem.series``: "how many series_start items of ``acq`` its producer had
handed over when the end arrived ... a count below the recorder's marks such a late end, which then
closes nothing of the newer series"; ``service/sink.py`` sends a series' own count (1 for the first).
docs/service.md: "A new `series_start` for an acquisition being recorded closes its part; its next
frames go to a new part", and ``/entry/start_time`` is the "ISO 8601 time of the acquisition's first
frame (its ts)". Mutation audit (round 2): ``<=`` for ``<`` (RC5) left every series open after its
own ``series_end`` until ``idle_close_s``; forgetting the time origin on ``series_start`` (RC6) gave
a series after one whose ``series_end`` was lost the first series' start time and a time axis from
4000 s on. Both survived the recorder tests. Real Recorder, real files read back with h5py.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import h5py
import numpy as np
import pytest

from sbd_stream.config import RecordSettings
from sbd_stream.metrics import Metrics
from sbd_stream.sinks.recorder import Recorder, RecordItem

pytestmark = pytest.mark.integration


def _recorder(directory: Path) -> Recorder:
    return Recorder(RecordSettings(directory=directory, min_free_bytes=0, record_llr=False), Metrics())


def _frames(rec: Recorder, t: float) -> None:
    for s in range(3):
        rec.write(RecordItem("raw", "a", s, t + 0.1 * s, np.ones((16, 12), np.uint16)))


def _start(path: Path) -> float:
    with h5py.File(path, "r") as f:
        return dt.datetime.fromisoformat(f["entry/start_time"][()].decode()).timestamp()


def _time(path: Path) -> list[float]:
    with h5py.File(path, "r") as f:
        return f["raw/time"][:].tolist()


@pytest.mark.timeout(60)
def test_a_series_end_with_its_own_series_count_closes_its_part(tmp_path: Path) -> None:
    rec = _recorder(tmp_path)
    for n, t in ((1, 1000.0), (2, 5000.0)):
        rec.write(RecordItem("series_start", "a", meta={}))
        _frames(rec, t)
        assert len(rec.open_paths()) == 1
        rec.write(RecordItem("series_end", "a", series=n))  # as service/sink.py sends it
        assert rec.open_paths() == []  # closed now, not after idle_close_s (60 s)
    rec.close_all()
    first, second = tmp_path / "a.nxs", tmp_path / "a_0001.nxs"
    assert sorted(p.name for p in tmp_path.glob("*.nxs")) == [first.name, second.name]
    assert (_start(first), _start(second)) == (1000.0, 5000.0)


@pytest.mark.timeout(60)
def test_a_late_series_end_of_an_earlier_series_closes_nothing_of_the_newer_one(tmp_path: Path) -> None:
    rec = _recorder(tmp_path)
    rec.write(RecordItem("series_start", "a", meta={}))
    _frames(rec, 1000.0)
    rec.write(RecordItem("series_start", "a", meta={}))
    _frames(rec, 5000.0)
    rec.write(RecordItem("series_end", "a", series=1))  # the first series' end, behind its outputs
    assert [Path(p).name for p in rec.open_paths()] == ["a_0001.nxs"]
    rec.write(RecordItem("series_end", "a", series=2))
    assert rec.open_paths() == []
    rec.close_all()


@pytest.mark.timeout(60)
def test_a_series_start_after_a_lost_series_end_starts_the_time_axis_again(tmp_path: Path) -> None:
    rec = _recorder(tmp_path)
    rec.write(RecordItem("series_start", "a", meta={}))
    _frames(rec, 1000.0)  # this series' series_end never arrives
    rec.write(RecordItem("series_start", "a", meta={}))
    _frames(rec, 5000.0)
    rec.write(RecordItem("series_end", "a", series=2))
    rec.close_all()
    first, second = tmp_path / "a.nxs", tmp_path / "a_0001.nxs"
    assert _start(first) == 1000.0 and _time(first) == pytest.approx([0.0, 0.1, 0.2])
    assert _start(second) == 5000.0  # the new series' first frame, not the lost one's
    assert _time(second) == pytest.approx([0.0, 0.1, 0.2])
