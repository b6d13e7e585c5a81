"""The sinks' state shared between the source's thread and the workers', and what reaches a sink that a
stop already closed: real ``RecorderSink`` / ``Recorder`` (HDF5 files) / ``Publisher`` (ZeroMQ).

The race: ``RecorderSink`` kept, per acquisition, the series count of each ``series_end`` not yet done;
the source's thread appended (``series_arrived``) while a worker popped (``series_done``), with no lock.
A lost update gave every later end of a reused acquisition name the wrong count (it then closed nothing:
"late"), and ``Recent.__setitem__`` (set, then ``move_to_end``) raised KeyError when the other thread
popped the key in between, which lost that ``series_end``. 18479-19541 wrong of 20000 before.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from sbd_stream.config import PublishSettings, RecordSettings
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import (
    TOPIC_DENOISED,
    TOPIC_SERIES_END,
    TOPIC_SERIES_START,
    FrameHeader,
    SeriesHeader,
    SeriesMessage,
)
from sbd_stream.service.sink import RecorderSink
from sbd_stream.sinks.publisher import OutputItem, Publisher
from sbd_stream.sinks.record_item import Recent, RecordItem
from sbd_stream.sinks.recorder import Recorder

pytestmark = pytest.mark.integration


@pytest.fixture
def tiny_switch_interval() -> Iterator[None]:
    """Thread switches every microsecond: the interleavings a busy service meets once an hour, now."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


class _Submitted:
    """A recorder that keeps what it is handed (the race is in the sink's own bookkeeping)."""

    def __init__(self) -> None:
        self.items: list[RecordItem] = []

    def submit(self, item: RecordItem) -> bool:
        self.items.append(item)
        return True


@pytest.mark.timeout(120)
def test_each_series_end_carries_its_own_series_count_across_threads(tiny_switch_interval: None) -> None:
    """An acquisition name reused series after series (a bridge naming every series "live"): the source's
    thread announces start and end, a worker releases each end behind it; the k-th end carries k."""
    n = 20000
    rec = _Submitted()
    sink = RecorderSink(rec)  # type: ignore[arg-type]
    line: queue.Queue[SeriesMessage | None] = queue.Queue()
    crashed: list[BaseException] = []

    def source() -> None:
        try:
            for k in range(n):
                sink.series_arrived(SeriesMessage(TOPIC_SERIES_START, SeriesHeader("live", float(k))))
                end = SeriesMessage(TOPIC_SERIES_END, SeriesHeader("live", float(k)))
                sink.series_arrived(end)
                line.put(end)
        except BaseException as exc:  # the receiver's guard caught it: that series_end never went on
            crashed.append(exc)
        finally:
            line.put(None)

    def worker() -> None:
        while (msg := line.get()) is not None:
            sink.series_done(msg)

    threads = [threading.Thread(target=source), threading.Thread(target=worker)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(100)
    assert not crashed, crashed
    ends = [it.series for it in rec.items if it.kind == "series_end"]
    wrong = [(k + 1, got) for k, got in enumerate(ends) if got != k + 1]
    assert len(ends) == n and not wrong, (len(ends), len(wrong), wrong[:5])


@pytest.mark.timeout(60)
def test_recent_set_never_raises_while_another_thread_pops(tiny_switch_interval: None) -> None:
    """``Recent.__setitem__`` against a concurrent ``pop`` of the same key (set + move_to_end raised)."""
    d = Recent(limit=8)
    stop = threading.Event()
    crashed: list[BaseException] = []

    def popper() -> None:
        while not stop.is_set():
            d.pop("k", None)

    t = threading.Thread(target=popper)
    t.start()
    try:
        for i in range(200000):
            d["k"] = i
    except BaseException as exc:
        crashed.append(exc)
    finally:
        stop.set()
        t.join(30)
    assert not crashed, crashed


def _frame(acq: str, seq: int) -> tuple[FrameHeader, np.ndarray]:
    data = np.zeros((16, 16), np.float32)
    return FrameHeader(acq=acq, seq=seq, ts=float(seq), shape=(16, 16), dtype="float32"), data


@pytest.mark.timeout(60)
def test_an_output_after_the_recorder_closed_is_counted_as_closed_not_queue_full(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker out of its time emits after the stop closed the recorder: counted in
    ``sbd_record_dropped_total`` and said as what it is; it was logged as "recorder queue full"."""
    m = Metrics()
    rec = Recorder(RecordSettings(directory=tmp_path, min_free_bytes=0, compression="none"), m)
    rec.start()
    h, data = _frame("a", 0)
    assert rec.record("raw", h, data)
    rec.stop()
    rec.join(30)
    with caplog.at_level(logging.ERROR, logger="sbd_stream.sinks.recorder"):
        assert not rec.record("denoised", h, data)
        assert rec.submit(RecordItem("series_end", "a")) is False  # nothing to record: not counted
    assert m.value("sbd_record_dropped_total") == 1
    assert "recorder closed at stop: denoised frame 0 of a NOT recorded" in caplog.text
    assert "queue full" not in caplog.text


@pytest.mark.timeout(60)
def test_a_recorder_that_gives_up_counts_what_is_queued_and_closes_its_files(tmp_path: Path) -> None:
    """Out of time at stop: what is still queued is counted, not written, and the file closes cleanly."""
    import h5py

    m = Metrics()
    rec = Recorder(RecordSettings(directory=tmp_path, min_free_bytes=0, compression="none"), m)
    for seq in range(50):  # queued before the thread runs: all of it is still queued at the give-up
        h, data = _frame("b", seq)
        rec.record("raw", h, data)
    rec.give_up("test")
    rec.start()
    rec.join(30)
    assert not rec.running()
    assert m.value("sbd_record_dropped_total") == 50
    assert not rec.record("raw", *_frame("b", 50))  # closed: counted too
    assert m.value("sbd_record_dropped_total") == 51
    for part in tmp_path.glob("*.nxs"):
        with h5py.File(part, "r") as f:  # plain h5py: no open-for-write flag left
            assert f is not None


@pytest.mark.timeout(60)
def test_an_output_after_the_publisher_closed_is_counted() -> None:
    """``Publisher.submit`` ignored a refused put: outputs after the stop were lost without a count."""
    m = Metrics()
    pub = Publisher(PublishSettings(endpoint="tcp://127.0.0.1:*"), m, "test")
    pub.start()
    pub.stop()
    pub.join(30)
    item = OutputItem(TOPIC_DENOISED, "c", 1, 0.0, np.zeros((4, 4), np.float32))
    assert pub.submit(item) is False
    assert m.value("sbd_publish_dropped_total", {"topic": "denoised"}) == 1
