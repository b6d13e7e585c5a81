"""A DECTRIS recording states when it was made, not 1970 (audit "clocks", defect 6).

A DECTRIS ``ts`` is the detector's own clock, seconds from the series' start (docs/dectris.md), and
``/entry/start_time`` was the ISO date of the first frame's ``ts``: every DECTRIS recording started
1970-01-01T00:00:00, and so did the time axis' ``raw/time@start``. Real recordings through the real
``Recorder``; a wire format v1 one, whose ``ts`` is a date, keeps stating its first frame's.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from sbd_stream.config import RecordSettings
from sbd_stream.metrics import Metrics
from sbd_stream.sinks.recorder import Recorder, RecordItem, open_recording

pytestmark = pytest.mark.integration


def _start_time(directory: Path, dialect: str, ts: list[float]) -> float:
    rec = Recorder(RecordSettings(directory=directory, min_free_bytes=0, compression="none"), Metrics())
    rec.write(RecordItem("series_start", "acq", meta={"dialect": dialect, "series": 7}))
    for q, t in enumerate(ts):
        rec.write(RecordItem("raw", "acq", q, t, np.full((16, 12), q, np.uint16)))
    rec.close_all()
    (path,) = directory.glob("*.nxs")
    with open_recording(path) as f:
        assert list(f["raw/time"]) == pytest.approx([t - ts[0] for t in ts])  # the axis is unchanged
        start = f["entry/start_time"][()].decode()
        assert f["raw/time"].attrs["start"] == start  # the time axis' origin: was 1970 for DECTRIS
        return datetime.fromisoformat(start).timestamp()


def test_a_dectris_recording_starts_when_it_was_made(tmp_path: Path) -> None:
    before = time.time()
    start = _start_time(tmp_path / "d", "dectris-stream-v1", [0.0, 0.025, 0.05])  # the detector's clock
    assert before - 1 <= start <= time.time() + 1  # was 0.0: 1970-01-01


def test_a_wire_v1_recording_still_starts_at_its_first_frame(tmp_path: Path) -> None:
    assert _start_time(tmp_path / "w", "wire-v1", [1.7e9, 1.7e9 + 0.025]) == pytest.approx(1.7e9)
