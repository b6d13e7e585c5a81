"""What the receiver reports about input it did not get whole, on real ZeroMQ sockets on loopback.

Frames lost before an acquisition's first one (a PUB that sent before the service had connected) are
counted and explained once; every rejected message is counted by reason and the first of each reason
is logged at WARNING; a producer that restarts its numbering without ``series_start`` is recorded in a
new part (real HDF5 files), so no part holds one ``seq`` twice.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zmq
from conftest import wait_until

from sbd_stream.config import IngestSettings, RecordSettings, SocketMode
from sbd_stream.frames import Frame, SeriesMessage
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import encode_frame, encode_series
from sbd_stream.service.sink import RecorderSink
from sbd_stream.sinks.recorder import Recorder, open_recording
from sbd_stream.sources.receiver import Receiver, open_receiver

pytestmark = pytest.mark.integration

ARR = np.arange(16 * 16, dtype=np.uint16).reshape(16, 16)


def _connect(
    m: Metrics, on_frame: Callable[[Frame], None], on_series: Callable[[SeriesMessage], None] | None = None
) -> tuple[zmq.Socket, Receiver]:
    """A bridge's XPUB and the service's receiver connected to it, subscription arrived (nothing lost)."""
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.XPUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    settings = IngestSettings(endpoint=f"tcp://127.0.0.1:{port}", mode=SocketMode.connect)
    ing = open_receiver(settings, m, on_frame, on_series or (lambda s: None), ctx)
    ing.start()
    assert pub.poll(20_000) and pub.recv()[:1] == b"\x01", "the receiver never subscribed"
    return pub, ing


def _close(pub: zmq.Socket, ing: Receiver) -> None:
    ing.stop()
    ing.join(5)
    pub.close(0)


@pytest.mark.timeout(60)
def test_frames_lost_before_an_acquisitions_first_frame_are_counted_and_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    m = Metrics()
    got: list[Frame] = []
    caplog.set_level(logging.INFO, logger="sbd_stream.sources.sequence")
    pub, ing = _connect(m, got.append)
    try:
        for seq in (33, 34, 35):  # as after a PUB that sent frames 0-32 before the service connected
            pub.send_multipart(encode_frame(ARR, "late", seq, 0.0))
        for seq in (5, 6):  # a second acquisition that starts late: counted too, said at INFO
            pub.send_multipart(encode_frame(ARR, "late2", seq, 0.0))
        pub.send_multipart(encode_series(b"series_start", "ok", 0.0))
        for seq in range(3):  # numbered from 0 after its series_start: nothing missing
            pub.send_multipart(encode_frame(ARR, "ok", seq, 0.0))
        assert wait_until(lambda: len(got) == 8)
    finally:
        _close(pub, ing)
    assert m.value("sbd_frames_missing_total") == 33 + 5
    assert m.value("sbd_sequence_gaps_total") == 2
    assert m.value("sbd_sequence_restarts_total") == 2  # late2 beside late; ok's series_start
    said = [r for r in caplog.records if r.name == "sbd_stream.sources.sequence"]
    warnings = [r.getMessage() for r in said if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "acquisition late started at seq 33: 33 frames before it were not received" in warnings[0]
    assert "sbd_frames_missing_total" in warnings[0] and "docs/wire-format.md" in warnings[0]
    infos = [r.getMessage() for r in said if r.levelno == logging.INFO]
    assert infos == ["acquisition late2 started at seq 5: 5 frames before it were not received"]


@pytest.mark.timeout(60)
def test_each_rejection_reason_is_logged_once_at_warning(caplog: pytest.LogCaptureFixture) -> None:
    """Output-only header keys on an input frame are ``unknown_field`` (they were accepted and then
    overwritten or dropped), and a reason's first message is a WARNING naming its metric."""
    m = Metrics()
    got: list[Frame] = []
    caplog.set_level(logging.DEBUG, logger="sbd_stream.sources.dialect")
    pub, ing = _connect(m, got.append)
    hdr = {"v": 1, "acq": "a", "seq": 0, "ts": 0.0, "shape": [16, 16], "dtype": "uint16"}
    bad = [
        [b"frame", b"{", b""],
        [b"frame", b"[1,", b""],
        [b"frame", b'{"v": 1, "acq": NaN', b""],
        [b"frame", json.dumps({**hdr, "engine": "mine"}).encode(), ARR.tobytes()],
        [b"frame", json.dumps({**hdr, "columns": [[1, 2, 3.0, 4.0]]}).encode(), ARR.tobytes()],
        [b"denoised", json.dumps(hdr).encode(), ARR.tobytes()],  # an output looped back in
        [b"denoised", json.dumps(hdr).encode(), ARR.tobytes()],
    ]
    try:
        for parts in bad:
            pub.send_multipart(parts)
        pub.send_multipart(encode_frame(ARR, "a", 0, 0.0))  # behind them all: when it arrives, so did they
        assert wait_until(lambda: len(got) == 1)
    finally:
        _close(pub, ing)
    said = [r for r in caplog.records if r.name == "sbd_stream.sources.dialect"]
    warnings = [r.getMessage() for r in said if r.levelno == logging.WARNING]
    assert len(warnings) == 3, warnings
    counts = {
        r: m.value("sbd_frames_malformed_total", {"reason": r})
        for r in ("bad_json", "unknown_field", "unexpected_topic")
    }
    assert counts == {"bad_json": 3, "unknown_field": 2, "unexpected_topic": 2}
    for reason in counts:
        (line,) = [w for w in warnings if f"({reason})" in w]
        assert f'sbd_frames_malformed_total{{reason="{reason}"}}' in line
    assert any("engine" in w for w in warnings)  # what was wrong: the key refused
    assert len([r for r in said if r.levelno == logging.DEBUG]) == len(bad) - 3


@pytest.mark.timeout(60)
def test_a_producer_restart_without_series_start_is_recorded_in_a_new_part(tmp_path: Path) -> None:
    m = Metrics()
    rec = Recorder(RecordSettings(directory=tmp_path, min_free_bytes=0), m)
    sink = RecorderSink(rec)
    sink.start()
    got: list[Frame] = []

    def on_frame(frame: Frame) -> None:
        got.append(frame)
        sink.raw(frame)

    pub, ing = _connect(m, on_frame, sink.series_arrived)
    try:
        pub.send_multipart(encode_series(b"series_start", "r", 100.0))
        for seq in range(5):
            pub.send_multipart(encode_frame(ARR + seq, "r", seq, 100.0 + seq))
        for seq in range(3):  # the producer came back, numbering from 0, without a series_start
            pub.send_multipart(encode_frame(ARR + 10 + seq, "r", seq, 200.0 + seq))
        assert wait_until(lambda: len(got) == 8)
    finally:
        _close(pub, ing)
        sink.stop()
        sink.join(30)
    assert m.value("sbd_sequence_restarts_total") == 1
    assert m.value("sbd_record_rolls_total", {"reason": "restart"}) == 1
    with open_recording(tmp_path / "r.nxs") as f:
        assert list(f["raw/seq"]) == [0, 1, 2, 3, 4]
    with open_recording(tmp_path / "r_0001.nxs") as f:
        assert list(f["raw/seq"]) == [0, 1, 2] and f.attrs["part"] == 1
        np.testing.assert_array_equal(f["raw/frames"][2], ARR + 12)
        assert list(f["raw/time"]) == [0.0, 1.0, 2.0]  # the restarted run's own time axis
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.nxs", "r_0001.nxs"]
