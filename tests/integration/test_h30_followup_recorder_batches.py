"""The recorder writes an acquisition's queued items together, so interleaved acquisitions past
``record.max_open_files`` no longer close and reopen a part per item (audit h30 follow-up).

Audit h30: 80 acquisitions x 3 small frames round-robin at ~250 frames/s (raw, denoised and llr
recorded) lost 126-140 items, "NOT recorded (recorder queue full)". Measured (benchmarks/bench_recorder.py
``round_robin``, /tmp/h30/wire-followup/REPORT.md): every item found its part closed for the bound
(16), closed another and reopened its own, ~10x an append. Behind, the writer now takes the queued items
of the acquisition in hand along, in their order. The queue is filled before the thread starts here,
so what is batched does not depend on timing: one close for the bound per acquisition, not per item.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from sbd_stream.config import RecordSettings
from sbd_stream.frames import FrameQueue
from sbd_stream.metrics import Metrics
from sbd_stream.sinks.recorder import BATCH, Recorder, RecordItem, open_recording

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("compress_threads", [0, 2])
def test_round_robin_past_max_open_files_writes_each_acquisition_in_one_opening(
    tmp_path: Path, compress_threads: int
) -> None:
    m = Metrics()
    s = RecordSettings(
        directory=tmp_path, min_free_bytes=0, max_open_files=4, compress_threads=compress_threads
    )
    rec = Recorder(s, m)
    acqs = [f"rr-{k:02d}" for k in range(12)]
    raw = np.arange(64, dtype=np.uint16).reshape(8, 8)
    rx = 0
    for seq in range(3):
        for a in acqs:
            if seq == 0:
                assert rec.submit(RecordItem("series_start", a, meta={"a": a}))
            assert rec.submit(RecordItem("raw", a, seq, float(seq), raw + seq, rx=rx))
            assert rec.submit(
                RecordItem("denoised", a, seq, float(seq), np.full((8, 8), seq, np.float32), rx=rx)
            )
            llr = RecordItem("llr", a, seq, float(seq), np.full((8, 8), -seq, np.float32), rx=rx)
            llr.evidence_frames = 0
            assert rec.submit(llr)
            rx += 1
    for a in acqs[::2]:  # every other acquisition ends: its end is written after its own frames
        assert rec.submit(RecordItem("series_end", a, series=1))
    rec.start()
    rec.stop()
    rec.join(60)
    assert m.value("sbd_record_dropped_total") == 0
    assert sum(m.value("sbd_frames_recorded_total", {"kind": k}) for k in ("raw", "denoised", "llr")) == 108
    # each acquisition opened once; closed once for the bound (the first 8 of 12), never reopened
    assert m.value("sbd_record_files_closed_total", {"reason": "max_open"}) <= len(acqs) - 4
    assert sorted(p.name for p in tmp_path.glob("*.nxs")) == sorted(f"{a}.nxs" for a in acqs)
    for a in acqs:
        with open_recording(tmp_path / f"{a}.nxs") as f:
            for kind in ("raw", "denoised", "llr"):
                assert list(f[f"{kind}/seq"]) == [0, 1, 2] and list(f[f"{kind}/complete"]) == [1, 1, 1]
            np.testing.assert_array_equal(f["raw/frames"][2], raw + 2)
            np.testing.assert_array_equal(f["llr/frames"][1], np.full((8, 8), -1))
    assert rec.files == {} and rec.previous == {}


def test_take_matching_keeps_the_order_of_what_it_takes_and_of_what_stays() -> None:
    depth: list[int] = []
    q = FrameQueue(10, max_bytes=100, on_change=depth.append)
    for i in range(6):
        assert q.put(("a" if i % 2 else "b", i), nbytes=10, force=i == 5)
    assert q.take_matching(lambda it: it[0] == "a", 2) == [("a", 1), ("a", 3)]
    assert depth[-1] == 4 and q._bytes == 40  # its byte count follows
    assert [q.get(0) for _ in range(4)] == [("b", 0), ("b", 2), ("b", 4), ("a", 5)]
    assert q.take_matching(lambda it: True, 5) == [] and BATCH > 1


def test_a_full_queue_says_which_bound_and_the_setting_to_raise(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What this load still needs when 80 new acquisitions start at once (each new part is ~10 ms of
    HDF5 layout): queue room. The loss line named no setting before."""
    m = Metrics()
    rec = Recorder(RecordSettings(directory=tmp_path, min_free_bytes=0), m, queue_frames=2)
    frame = np.ones((4, 4), np.uint16)
    with caplog.at_level(logging.ERROR, logger="sbd_stream.sinks.recorder"):
        assert rec.submit(RecordItem("raw", "a", 0, 0.0, frame)) and rec.submit(
            RecordItem("raw", "a", 1, 1.0, frame)
        )
        assert not rec.submit(RecordItem("raw", "a", 2, 2.0, frame))
    lines = [r.getMessage() for r in caplog.records if "NOT recorded" in r.getMessage()]
    assert len(lines) == 1 and "ingest.record_queue_frames = 2" in lines[0], lines
    assert "\n" not in lines[0] and m.value("sbd_record_dropped_total") == 1
    rec.start()
    rec.stop()
    rec.join(10)
