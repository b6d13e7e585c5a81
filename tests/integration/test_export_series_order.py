"""`export` of an acquisition with two series, and of one with a gap in time: frame order and interval.

``sinks/export.py`` ``_survey``: "A part's ``segment`` (a new series_start or producer restart ...)
orders before ``seq``: two series of one acquisition both count from 0, and sorting by ``seq`` alone
interleaved them." The module docstring: TIFF ``finterval`` is "the median interval between consecutive
frames' times (s; gaps and dropped frames do not stretch it)". Mutation audit (round 2, EX4 and EX3):
sorting without the segment, and the mean instead of the median, both survived every export test.
Real Recorder files, real exports read back with numpy and tifffile.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from sbd_stream.config import RecordSettings
from sbd_stream.metrics import Metrics
from sbd_stream.sinks.export import export, frame_interval
from sbd_stream.sinks.recorder import Recorder, RecordItem

pytestmark = pytest.mark.integration


def _settings(directory: Path) -> RecordSettings:
    return RecordSettings(directory=directory, min_free_bytes=0, record_llr=False)


@pytest.mark.timeout(60)
def test_two_series_of_one_acquisition_are_exported_one_after_the_other(tmp_path: Path) -> None:
    rec = Recorder(_settings(tmp_path / "rec"), Metrics())
    for n, base in ((1, 10), (2, 20)):  # each series counts seq from 0, as a detector does
        rec.write(RecordItem("series_start", "a", meta={}))
        for s in range(3):
            rec.write(RecordItem("raw", "a", s, 100.0 * n + 0.1 * s, np.full((8, 6), base + s, np.uint16)))
        rec.write(RecordItem("series_end", "a", series=n))
    rec.close_all()
    first = tmp_path / "rec" / "a.nxs"
    assert len(list((tmp_path / "rec").glob("*.nxs"))) == 2  # one part per series

    summary = export(first, "npy", kind="raw", out=tmp_path / "a.npy")
    frames = np.load(summary["output"])
    assert frames[:, 0, 0].tolist() == [10, 11, 12, 20, 21, 22]  # never 10, 20, 11, 21, ...
    side = json.loads(Path(summary["sidecar"]).read_text())
    assert side["frame_numbers"] == [0, 1, 2, 0, 1, 2]
    assert side["segment"][:3] == [side["segment"][0]] * 3 and side["segment"][3:] == [side["segment"][3]] * 3
    assert side["segment"][0] < side["segment"][3]  # "time_s starts again at 0 in each segment"
    assert side["time_s"] == pytest.approx([0.0, 0.1, 0.2, 0.0, 0.1, 0.2])
    assert summary["segments"] == 2 and summary["frame_interval_s"] == pytest.approx(0.1)

    tiff = export(first, "tiff", kind="raw", out=tmp_path / "a.tif")
    assert tifffile.imread(tiff["output"])[:, 0, 0].tolist() == [10, 11, 12, 20, 21, 22]


def test_the_frame_interval_is_the_median_step_not_stretched_by_a_gap() -> None:
    assert frame_interval([0.0, 0.1, 0.2, 0.6, 0.7]) == pytest.approx(0.1)
    # a step across a segment boundary is no interval (each segment's time starts again at 0)
    assert frame_interval([0.0, 0.1, 0.2, 0.0, 0.1, 0.2], [0, 0, 0, 1, 1, 1]) == pytest.approx(0.1)
    assert frame_interval([5.0]) == 0.0


@pytest.mark.timeout(60)
def test_a_gap_in_time_does_not_stretch_the_tiff_finterval(tmp_path: Path) -> None:
    rec = Recorder(_settings(tmp_path / "rec"), Metrics(), sampling={"pixel_size_A": 0.5})
    ts = [100.0, 100.1, 100.2, 100.3, 100.7, 100.8]  # 0.1 s apart, one 0.4 s gap (dropped frames)
    for s, t in enumerate(ts):
        rec.write(RecordItem("raw", "a", s, t, np.full((8, 6), s, np.uint16)))
    rec.close_all()
    summary = export(tmp_path / "rec" / "a.nxs", "tiff", kind="raw", out=tmp_path / "a.tif")
    assert summary["frame_interval_s"] == pytest.approx(0.1)
    with tifffile.TiffFile(summary["output"]) as t:
        meta = t.imagej_metadata
    assert meta is not None and meta["finterval"] == pytest.approx(0.1)
