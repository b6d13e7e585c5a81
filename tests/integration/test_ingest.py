"""Wire format v1 input: sequence accounting, the non-blocking queues, and a real SUB socket on loopback."""

from __future__ import annotations

import json
import logging
import threading
import time

import numpy as np
import pytest
import zmq

from sbd_stream.config import BackpressurePolicy, IngestSettings, SocketMode
from sbd_stream.frames import Frame, FrameQueue
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import FrameHeader, encode_frame, encode_series
from sbd_stream.service.batching import Batcher
from sbd_stream.sources.receiver import open_receiver
from sbd_stream.sources.sequence import SeqEvent, SequenceTracker


def test_sequence_tracker_classifies_events() -> None:
    t = SequenceTracker(reorder_window=16)
    assert t.observe("a", 5) == (SeqEvent.gap, 5)  # numbering starts at 0: frames 0-4 were lost
    assert t.observe("a", 6) == (SeqEvent.ok, 0)
    assert t.observe("a", 9) == (SeqEvent.gap, 2)
    assert t.observe("a", 9) == (SeqEvent.duplicate, 0)
    assert t.observe("a", 6) == (SeqEvent.duplicate, 0)
    assert t.observe("a", 8) == (SeqEvent.out_of_order, 0)
    assert t.observe("a", 8) == (SeqEvent.duplicate, 0)
    assert t.observe("a", 10) == (SeqEvent.ok, 0)
    assert t.observe("a", 0) == (SeqEvent.restart, 0)  # same acquisition, counting from 0 again
    assert t.observe("a", 1) == (SeqEvent.ok, 0)
    assert t.observe("b", 1) == (SeqEvent.restart, 1)  # new acquisition id, its frame 0 lost
    assert t.observe("b", 100) == (SeqEvent.gap, 98)
    assert t.observe("b", 50) == (SeqEvent.restart, 0)  # far back: beyond the reorder window


def _frame(seq: int, shape=(4, 4), acq: str = "a") -> Frame:
    return Frame(FrameHeader(acq, seq, 0.0, shape, "uint16"), np.zeros(shape, np.uint16))


def test_frame_queue_bounds_and_policies() -> None:
    q = FrameQueue(3)
    assert all(q.put(i) for i in range(3))
    assert not q.put(99)  # full: refused, never blocks
    assert [q.get_nowait() for _ in range(4)] == [0, 1, 2, None]
    evicted: list[object] = []
    q = FrameQueue(2, drop_oldest=True, on_evict=evicted.append)
    for i in range(5):
        assert q.put(i)
    assert evicted == [0, 1, 2] and [q.get_nowait(), q.get_nowait()] == [3, 4]
    qb = FrameQueue(100, max_bytes=10)
    assert qb.put("a", 6) and not qb.put("b", 6) and qb.put("c", 4)
    assert qb.put("ctl", 0, force=True) and len(qb) == 3


def test_batcher_lossless_keeps_order_and_splits_on_shape_and_markers() -> None:
    q = FrameQueue(100)
    for s in range(5):
        q.put(_frame(s))
    q.put("marker")
    q.put(_frame(5, shape=(8, 8)))
    b = Batcher(q, max_frames=3, timeout_ms=1, policy=BackpressurePolicy.lossless)
    seqs = []
    for _ in range(4):
        batch = b.next_batch(0.01)
        seqs.append([f.header.seq if isinstance(f, Frame) else f for f in batch])
    assert seqs == [[0, 1, 2], [3, 4], ["marker"], [5]]
    assert b.next_batch(0.01) == [] and b.idle()


def test_batcher_latest_skips_to_newest_but_never_skips_markers() -> None:
    q = FrameQueue(100)
    skipped: list[int] = []
    for s in range(10):
        q.put(_frame(s))
    q.put("end")
    q.put(_frame(10))
    b = Batcher(
        q,
        max_frames=2,
        timeout_ms=1,
        policy=BackpressurePolicy.latest,
        on_skip=lambda frames: skipped.extend(f.header.seq for f in frames),
    )
    assert [f.header.seq for f in b.next_batch(0.01)] == [8, 9]
    assert b.next_batch(0.01) == ["end"]
    assert [f.header.seq for f in b.next_batch(0.01)] == [10]
    assert skipped == list(range(8))  # the skipped frames themselves (the complete lane keeps them)


def _wait(pred, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


def _await_subscription(xpub: zmq.Socket) -> None:
    """PUB drops until the SUB's subscription has arrived: an XPUB reads it as it does, so readiness is
    known without probe frames (which would enter the counts) or a sleep."""
    assert xpub.poll(20_000), "the receiver never subscribed"
    assert xpub.recv()[:1] == b"\x01"


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_ingest_counts_everything_on_a_real_socket() -> None:
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.XPUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    m = Metrics()
    got: list[Frame] = []
    series: list[bytes] = []
    ing = open_receiver(
        IngestSettings(
            endpoint=f"tcp://127.0.0.1:{port}", mode=SocketMode.connect, max_payload_bytes=64 * 64 * 2
        ),
        m,
        got.append,
        lambda s: series.append(s.topic),
        ctx,
    )
    ing.start()
    try:
        _await_subscription(pub)
        assert m.value("sbd_frames_received_total") == 0  # counts from zero: nothing was sent to probe
        arr = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
        pub.send_multipart(encode_series(b"series_start", "acq1", 0.0))
        for seq in (0, 1, 2, 2, 5, 4, 6):  # duplicate 2, gap of 3-4, late 4
            pub.send_multipart(encode_frame(arr + seq, "acq1", seq, float(seq)))
        hdr = {"v": 1, "acq": "acq1", "seq": 7, "ts": 0.0, "shape": [64, 64], "dtype": "uint16"}
        bad = [
            [b"frame", json.dumps(hdr).encode(), b"\0" * 10],  # wrong payload length
            [b"frame", json.dumps({**hdr, "shape": [70000, -3]}).encode(), b""],  # absurd shape
            [b"frame", json.dumps({**hdr, "dtype": "float64"}).encode(), b"\0" * 64 * 64 * 8],
            [b"frame", b"garbage", b""],
            [b"frame", json.dumps({**hdr, "shape": [128, 128]}).encode(), b"\0" * 128 * 128 * 2],  # > max
            [b"denoised", json.dumps(hdr).encode(), b"\0" * 64 * 64 * 2],  # an output looped back in
            [b"only-one-part"],
        ]
        for parts in bad:
            pub.send_multipart(parts)
        pub.send_multipart(encode_frame(arr, "acq1", 7, 7.0))
        pub.send_multipart(encode_series(b"series_end", "acq1", 0.0))
        assert _wait(lambda: len(series) == 2)
        acq1 = [f for f in got if f.header.acq == "acq1"]
        assert [f.header.seq for f in acq1] == [0, 1, 2, 5, 4, 6, 7]
        np.testing.assert_array_equal(acq1[3].data, arr + 5)
        assert not acq1[0].data.flags.writeable  # a view of the received buffer, not a copy
        assert m.value("sbd_frames_received_total") == 7 and len(got) == 7
        assert m.value("sbd_frames_duplicate_total") == 1
        assert m.value("sbd_sequence_gaps_total") == 1
        assert m.value("sbd_frames_missing_total") == 2
        assert m.value("sbd_frames_out_of_order_total") == 1
        reasons = {
            r: m.value("sbd_frames_malformed_total", {"reason": r})
            for r in (
                "bad_length",
                "bad_shape",
                "bad_dtype",
                "bad_json",
                "too_large",
                "unexpected_topic",
                "bad_parts",
            )
        }
        assert reasons == dict.fromkeys(reasons, 1.0)
        assert series == [b"series_start", b"series_end"]
    finally:
        ing.stop()
        ing.join(5)
        pub.close(0)


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_ingest_never_blocks_on_a_stuck_consumer() -> None:
    """A handler that can't keep up must not stall receiving: the queue refuses and counts."""
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    m = Metrics()
    q = FrameQueue(5)
    refused = threading.Semaphore(0)

    def on_frame(f: Frame) -> None:
        if not q.put(f):
            refused.release()

    ing = open_receiver(IngestSettings(endpoint=f"tcp://127.0.0.1:{port}"), m, on_frame, None, ctx)
    ing.start()
    try:
        arr = np.zeros((32, 32), np.uint8)
        assert _wait(lambda: (pub.send_multipart(encode_frame(arr, "w", 0, 0.0)), len(q) > 0)[1])
        for s in range(1, 50):
            pub.send_multipart(encode_frame(arr, "a", s, 0.0))
        assert _wait(lambda: m.value("sbd_frames_received_total") >= 50)
        assert len(q) == 5
    finally:
        ing.stop()
        ing.join(5)
        pub.close(0)


def test_a_raising_handler_is_counted_and_logged_never_fatal(caplog: pytest.LogCaptureFixture) -> None:
    """The receiver's one guard: a bug downstream is an internal_error with a traceback, per message."""
    m = Metrics()

    def on_frame(_f: Frame) -> None:
        raise RuntimeError("downstream bug")

    ing = open_receiver(IngestSettings(endpoint="tcp://127.0.0.1:*", mode=SocketMode.bind), m, on_frame)
    arr = np.zeros((4, 4), np.uint16)
    try:
        with caplog.at_level(logging.ERROR, logger="sbd_stream.sources.receiver"):
            for seq in range(3):
                ing.dispatch(encode_frame(arr, "a", seq, 0.0))
    finally:
        ing.close()
    assert m.value("sbd_frames_received_total") == 3
    assert m.value("sbd_frames_malformed_total", {"reason": "internal_error"}) == 3
    failures = [r for r in caplog.records if r.exc_info is not None]
    assert len(failures) == 3 and "wire-v1" in failures[0].getMessage()


def test_settings_pick_the_dialect_and_its_socket() -> None:
    """One tagged variant per dialect: DECTRIS-only fields are refused on wire format v1."""
    cases = {
        "wire-v1": ({"dialect": "wire-v1"}, zmq.SUB, "WireV1Dialect"),
        "wire-v1 pull": ({"dialect": "wire-v1", "socket_type": "pull"}, zmq.PULL, "WireV1Dialect"),
        "pull": ({"dialect": "dectris-stream-v1"}, zmq.PULL, "DectrisDialect"),
        "sub": ({"dialect": "dectris-stream-v2", "socket_type": "sub"}, zmq.SUB, "DectrisDialect"),
    }
    for inp, kind, plugin in cases.values():
        s = IngestSettings.model_validate({"endpoint": "tcp://127.0.0.1:*", "mode": "bind", "input": inp})
        ing = open_receiver(s, Metrics(), lambda _f: None)
        try:
            assert ing.sock.type == kind and type(ing.dialect).__name__ == plugin
            assert ing.dialect.name == inp["dialect"] and ing.endpoint.startswith("tcp://127.0.0.1:")
        finally:
            ing.close()
    assert IngestSettings().input.dialect == "wire-v1"
    with pytest.raises(ValueError, match="series_timeout_s"):
        IngestSettings.model_validate({"input": {"dialect": "wire-v1", "series_timeout_s": 5.0}})
    with pytest.raises(ValueError, match="dialect"):
        IngestSettings.model_validate({"input": {"dialect": "dectris-stream-v3"}})


def test_interleaved_acquisitions_are_each_accounted_on_their_own() -> None:
    """Two acquisitions on one stream (A0 B0 A1 B1 ...): one restart for the second acquisition, then the
    gaps and duplicates of each are seen as in a stream of its own."""
    from sbd_stream.sources.sequence import AcquisitionSequences

    t = AcquisitionSequences(reorder_window=16)
    events = [t.observe(acq, seq) for seq in range(3) for acq in ("a", "b")]
    assert events[1] == (SeqEvent.restart, 0) and events.count((SeqEvent.ok, 0)) == 5
    assert t.observe("a", 5) == (SeqEvent.gap, 2)  # a: 2, then 5
    assert t.observe("b", 3) == (SeqEvent.ok, 0)  # b goes on where it was
    assert t.observe("b", 3) == (SeqEvent.duplicate, 0)
    assert t.observe("a", 4) == (SeqEvent.out_of_order, 0)
    t.start("a")  # series_start of a: its numbering starts afresh, b's is kept
    assert t.observe("a", 0) == (SeqEvent.ok, 0) and t.observe("b", 4) == (SeqEvent.ok, 0)
    # past the most recent acquisitions one is evicted, but its numbering is remembered: x goes on
    small = AcquisitionSequences(max_acqs=2)
    assert [small.observe(a, 0)[0] for a in ("x", "y", "z")] == [SeqEvent.ok] + [SeqEvent.restart] * 2
    assert small.observe("x", 0) == (SeqEvent.duplicate, 0)  # its last number again: still a duplicate
    assert small.observe("x", 1) == (SeqEvent.ok, 0) and small.observe("z", 1) == (SeqEvent.ok, 0)
