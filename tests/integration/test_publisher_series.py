"""Series messages on the publisher's socket, on real ZeroMQ sockets on loopback.

The audit (run5c): 20 acquisitions each sent ``series_start`` at once. The service took all 20, but a
subscriber reading all the time (``RCVHWM`` 100000) got 16: the PUB dropped the rest at its high-water
mark (``publish.sndhwm`` 16) before ZeroMQ's I/O thread had drained them, and nothing counted it.
"""

from __future__ import annotations

import json
import logging
import threading

import numpy as np
import pytest
import zmq
from conftest import wait_until

from sbd_stream.config import PublishSettings
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import TOPIC_DENOISED, TOPIC_SERIES_START, FrameHeader
from sbd_stream.sinks.publisher import OutputItem, Publisher

pytestmark = pytest.mark.integration


class Reader:
    """A subscriber that reads all the time, in its own context (its own I/O thread), from a thread."""

    def __init__(self, endpoint: str, **opts: int) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, 100_000)
        for k, v in opts.items():
            self.sock.setsockopt(getattr(zmq, k), v)
        self.sock.connect(endpoint)
        self.sock.subscribe(b"")
        self.got: list[tuple[bytes, str]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            if self.sock.poll(50):
                topic, header, *_ = self.sock.recv_multipart()
                self.got.append((topic, json.loads(header)["acq"]))

    def close(self) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(5)
        self.sock.close(0)
        self.ctx.term()


def _subscribed(pub: Publisher, reader: Reader) -> None:
    """Probe series messages until the reader has one: its subscription reached the publisher."""
    for _ in range(200):
        pub.submit(OutputItem(TOPIC_SERIES_START, "probe"))
        if wait_until(lambda: any(a == "probe" for _, a in reader.got), timeout=0.1):
            return
    raise AssertionError("the subscriber never got a message")


@pytest.mark.timeout(60)
def test_a_burst_of_series_starts_reaches_a_reading_subscriber_whole() -> None:
    m = Metrics()
    pub = Publisher(PublishSettings(endpoint="tcp://127.0.0.1:*"), m, "e")
    reader = Reader(pub.endpoint)
    reader.thread.start()
    pub.start()
    try:
        _subscribed(pub, reader)
        for i in range(80):  # 80 acquisitions starting at once, as in the audit's run5
            pub.submit(OutputItem(TOPIC_SERIES_START, f"many-{i}"))
        assert wait_until(lambda: sum(a.startswith("many-") for _, a in reader.got) == 80, timeout=10), (
            f"{sum(a.startswith('many-') for _, a in reader.got)} of 80 series_start arrived"
        )
    finally:
        pub.stop()
        pub.join(10)
        reader.close()
    assert [a for _, a in reader.got if a.startswith("many-")] == [f"many-{i}" for i in range(80)]
    assert m.value("sbd_publish_dropped_total", {"topic": "series_start"}) == 0


@pytest.mark.timeout(60)
def test_a_subscriber_that_never_reads_costs_the_others_nothing_and_its_losses_are_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A stuck subscriber: frames go on without waiting; series messages wait for it a bounded time,
    then go to the others, and what it missed is counted and said once."""
    m = Metrics()
    pub = Publisher(PublishSettings(endpoint="tcp://127.0.0.1:*"), m, "e")
    reader = Reader(pub.endpoint)
    stuck = Reader(pub.endpoint, RCVHWM=1, RCVBUF=4096)  # never started: it never reads
    reader.thread.start()
    pub.start()
    dropped = lambda: m.value("sbd_publish_dropped_total", {"topic": "series_start"})  # noqa: E731
    n = 0
    try:
        _subscribed(pub, reader)
        with caplog.at_level(logging.DEBUG, "sbd_stream.sinks.publisher"):
            while not dropped() and n < 5000:  # 2 kB each, until the stuck one's buffers are full
                pub.submit(OutputItem(TOPIC_SERIES_START, f"s-{n}", meta={"pad": "x" * 2000}))
                n += 1
                if n % 500 == 0:
                    wait_until(lambda: len(pub.queue) == 0, timeout=10)
            assert wait_until(lambda: dropped() > 0, timeout=20), "the stuck subscriber never filled up"
            data = np.zeros((64, 64), np.float32)
            for q in range(200):  # frames after it: never held up by the stuck one
                pub.publish(TOPIC_DENOISED, FrameHeader("f", q, 0.0, (64, 64), "float32"), data)
            pub.submit(OutputItem(TOPIC_SERIES_START, "last"))
            assert wait_until(lambda: any(a == "last" for _, a in reader.got), timeout=20)
    finally:
        pub.stop()
        pub.join(10)
        reader.close()
        stuck.close()
    # the reader got every series message, those the stuck one missed included
    assert [a for t, a in reader.got if a.startswith("s-")] == [f"s-{i}" for i in range(n)]
    assert (
        m.value("sbd_frames_published_total", {"topic": "denoised"})
        + m.value("sbd_publish_dropped_total", {"topic": "denoised"})
        == 200
    )
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    frames = ("not keeping up", "frames that found a subscriber's queue full")  # its own line and summary
    warned = [w for w in warned if not any(f in w for f in frames)]
    assert len(warned) == 1 and "a subscriber's queue stayed full" in warned[0], warned
    assert "sbd_publish_dropped_total{topic='series_start'}" in warned[0]
