"""The publisher's accounting and headers: rules of docs/wire-format.md / service.md that no other test
pinned (mutation round h28). Real publishers on real loopback sockets.

* what the publish queue drops is counted in ``sbd_publish_dropped_total{topic}`` (wire-format.md,
  "Gaps in output seq"), series messages are never dropped from it;
* outputs that come after the stop, or are still queued when the stop's time runs out, are counted;
* an ``llr`` carries the meta it was published with (``n_columns`` and the flags), as float32.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import zmq
from conftest import wait_until

from sbd_stream.config import PublishSettings
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import (
    TOPIC_DENOISED,
    TOPIC_LLR,
    TOPIC_SERIES_END,
    TOPIC_SERIES_START,
    FrameHeader,
    FrameMessage,
    decode,
)
from sbd_stream.sinks.publisher import OutputItem, Publisher, without_producer_meta
from sbd_stream.sinks.xpub import XPubSender, xpub_socket

pytestmark = pytest.mark.integration


def _header(seq: int, meta: dict | None = None) -> FrameHeader:
    return FrameHeader("a", seq, 0.0, (2, 3), "float32", meta=meta or {})


def _dropped(m: Metrics, topic: str) -> float:
    return m.value("sbd_publish_dropped_total", {"topic": topic}) or 0.0


def _queued(pub: Publisher) -> list[OutputItem]:
    out = []
    while (it := pub.queue.get_nowait()) is not None:
        out.append(it)
    return out


def test_a_full_publish_queue_drops_the_oldest_frames_counted_and_never_a_series_message() -> None:
    m = Metrics()
    pub = Publisher(PublishSettings(endpoint="tcp://127.0.0.1:*", queue_frames=2), m, "e")
    try:  # never started: the queue only fills, as behind a publisher that fell behind
        pub.submit(OutputItem(TOPIC_SERIES_START, "a"))
        for seq in range(4):
            pub.publish(TOPIC_DENOISED, _header(seq), np.zeros((2, 3), np.float32))
        assert _dropped(m, "denoised") == 3  # 0, 1, 2 went for newer frames
        assert _dropped(m, "series_start") == 0
        assert [(it.topic, it.seq) for it in _queued(pub)] == [(TOPIC_SERIES_START, 0), (TOPIC_DENOISED, 3)]
    finally:
        pub.release_unstarted()


def test_outputs_after_the_stop_and_left_when_its_time_runs_out_are_counted() -> None:
    m = Metrics()
    pub = Publisher(PublishSettings(endpoint="tcp://127.0.0.1:*"), m, "e")
    try:
        for seq in range(3):
            pub.publish(TOPIC_LLR, _header(seq), np.zeros((2, 3), np.float32))
        pub.submit(OutputItem(TOPIC_SERIES_START, "a"))
        assert pub.give_up("test") == 4
        assert _dropped(m, "llr") == 3 and _dropped(m, "series_start") == 1
        assert not pub.submit(OutputItem(TOPIC_DENOISED, "a", 9, data=np.zeros((2, 3), np.float32)))
        assert _dropped(m, "denoised") == 1
    finally:
        pub.release_unstarted()


@pytest.mark.timeout(60)
def test_an_llr_goes_out_with_the_meta_it_was_published_with_as_float32() -> None:
    """The service publishes an ``llr`` with its frame's meta plus the column summary
    (``service/sink.py``): ``meta.n_columns`` is on every llr (wire-format.md)."""
    m = Metrics()
    pub = Publisher(PublishSettings(endpoint="tcp://127.0.0.1:*", dtype="float16"), m, "e")
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.connect(pub.endpoint)
    sub.subscribe(TOPIC_LLR)
    got: FrameMessage | None = None
    pub.start()
    try:
        data = np.array([[1.5, 7e4, 0], [0, 0, -1e5]], np.float32)  # beyond float16's range
        for _ in range(200):  # until the subscription is in place
            pub.publish(TOPIC_LLR, _header(5, {"detector": "K2"}), data, {"detector": "K2", "n_columns": 3})
            if sub.poll(100):
                got = decode(sub.recv_multipart())
                break
    finally:
        pub.stop()
        pub.join(10)
        sub.close(0)
        ctx.term()
    assert isinstance(got, FrameMessage), "the subscriber never got an llr"
    assert got.header.meta == {"detector": "K2", "n_columns": 3}
    assert got.header.dtype == "float32" and got.data.dtype == np.float32
    np.testing.assert_array_equal(got.data, data)  # as computed: not clipped to float16's range


def test_meta_dropped_keeps_every_flag_the_service_adds() -> None:
    """An output header over 64 KiB loses the producer's meta, never the service's own keys: the
    batch stage's ``blank`` / ``vacuum_not_flat`` flags included (wire-format.md, ``meta_dropped``)."""
    service = {"n_columns": 0, "blank": True, "vacuum_not_flat": True, "saturated_pixels": 4}
    kept = without_producer_meta({**service, "huge": "x" * 70_000, "other": 1})
    assert {k: kept[k] for k in service} == service
    assert "huge" not in kept and "other" not in kept
    assert "2 keys" in kept["meta_dropped"]


@pytest.mark.timeout(60)
def test_the_series_end_queued_at_the_stop_still_reaches_the_subscriber() -> None:
    """``stop`` sends what is queued, then closes with a linger, so the ``series_end`` queued last leaves
    even when large frames are still in the socket's pipe (docs/service.md: a stop loses no series end)."""
    m = Metrics()
    pub = Publisher(PublishSettings(endpoint="tcp://127.0.0.1:*", sndhwm=64), m, "e")
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 100_000)
    sub.connect(pub.endpoint)
    sub.subscribe(b"")
    pub.start()
    topics: list[bytes] = []
    try:
        for _ in range(200):  # probes until the subscription is in place
            pub.submit(OutputItem(TOPIC_SERIES_START, "probe"))
            if sub.poll(100):
                break
        big = np.zeros((1024, 1024), np.float32)  # 4 MiB each
        for seq in range(12):
            pub.publish(TOPIC_DENOISED, _header(seq), big)
        pub.submit(OutputItem(TOPIC_SERIES_END, "a"))
        pub.stop()
        pub.join(30)
        while sub.poll(5000):
            topics.append(sub.recv_multipart()[0])
            if topics[-1] == TOPIC_SERIES_END:
                break
    finally:
        sub.close(0)
        ctx.term()
    assert topics[-1:] == [TOPIC_SERIES_END]


@pytest.mark.timeout(60)
def test_an_output_that_cannot_be_encoded_is_set_aside_counted_and_the_next_one_sent() -> None:
    """One unsendable output (here a NaN in its meta: not JSON) is set aside by the supervisor and
    counted in ``sbd_publish_dropped_total{topic}``, and the publisher goes on with the next one."""
    m = Metrics()
    pub = Publisher(PublishSettings(endpoint="tcp://127.0.0.1:*"), m, "e")
    pub.start()
    try:
        data = np.zeros((2, 3), np.float32)
        pub.publish(TOPIC_DENOISED, _header(0), data, {"bad": float("nan")})
        pub.publish(TOPIC_DENOISED, _header(1), data)
        pub.stop()
        pub.join(30)
    finally:
        if pub.running():
            pub.give_up("test")
    assert _dropped(m, "denoised") == 1
    assert m.value("sbd_frames_published_total", {"topic": "denoised"}) == 1


@pytest.mark.timeout(120)
def test_a_frame_that_meets_a_full_subscriber_still_reaches_the_others() -> None:
    """sinks/xpub.py: a frame that meets a full pipe (a subscriber that stopped reading) goes out the
    lossy way at once, so every other subscriber still gets it; only the full one misses it."""
    ctx = zmq.Context()
    xpub = xpub_socket(ctx, 4)
    xpub.setsockopt(zmq.XPUB_VERBOSE, 1)  # both subscriptions reach us, so both are known in place
    xpub.setsockopt(zmq.SNDBUF, 65536)  # the stuck one fills up after a few frames
    xpub.bind("tcp://127.0.0.1:*")
    endpoint = xpub.getsockopt_string(zmq.LAST_ENDPOINT)
    got: list[bytes] = []
    stop = threading.Event()
    rctx, sctx = zmq.Context(), zmq.Context()
    reader, stuck = rctx.socket(zmq.SUB), sctx.socket(zmq.SUB)
    stuck.setsockopt(zmq.RCVHWM, 1)
    stuck.setsockopt(zmq.RCVBUF, 4096)
    reader.setsockopt(zmq.RCVHWM, 100_000)
    for s in (reader, stuck):
        s.connect(endpoint)
        s.subscribe(b"")

    def read() -> None:
        while not stop.is_set():
            if reader.poll(50):
                got.append(reader.recv_multipart()[1])

    thread = threading.Thread(target=read, daemon=True)
    try:
        for _ in range(2):
            assert xpub.poll(20_000) and xpub.recv()[:1] == b"\x01"
        thread.start()
        sender = XPubSender(xpub)
        pad = b"x" * 65536
        for q in range(10_000):  # one at a time, the reader's pipe empty: until one meets the stuck one full
            name = b"f-%d" % q
            met_full = not sender.frame([TOPIC_DENOISED, name, pad])
            assert wait_until(lambda name=name: name in got, timeout=20), f"{name!r} never reached the reader"
            if met_full:
                break
        else:
            raise AssertionError("the stuck subscriber never filled up")
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(5)
        for s in (reader, stuck, xpub):
            s.close(0)
        for c in (rctx, sctx, ctx):
            c.term()
