"""A subscriber too slow for the frames: it misses some, and the service says so.

Before (session 29) a frame that found a subscriber's pipe full was sent to the others and nothing
else happened: no counter moved and no line was logged, so a viewer falling behind on a slow link was
invisible to the facility (the brief: slow consumers are counted in metrics and logged once). Real
ZeroMQ sockets on loopback.
"""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest
from conftest import wait_until
from test_publisher_series import Reader, _subscribed

from sbd_stream.config import PublishSettings
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import TOPIC_DENOISED, FrameHeader
from sbd_stream.sinks.publisher import Publisher

pytestmark = pytest.mark.integration


@pytest.mark.timeout(120)
def test_frames_a_stuck_subscriber_missed_are_counted_and_said_once(caplog: pytest.LogCaptureFixture) -> None:
    m = Metrics()
    pub = Publisher(PublishSettings(endpoint="tcp://127.0.0.1:*", queue_frames=1000), m, "e")
    reader = Reader(pub.endpoint)
    stuck = Reader(pub.endpoint, RCVHWM=1, RCVBUF=4096)
    full = lambda: m.value("sbd_publish_subscriber_full_total", {"topic": "denoised"})  # noqa: E731
    assert full() == 0  # exported at 0 before anything happened, so increase() sees the first one
    stuck.thread.start()  # reads the probes below, so its subscription is known to have arrived
    reader.thread.start()
    pub.start()
    data = np.zeros((128, 128), np.float32)  # 64 kB a frame: the stuck one's buffers fill in a few MB
    n = 0
    try:
        _subscribed(pub, stuck)
        _subscribed(pub, reader)
        stuck.stop.set()
        stuck.thread.join(5)  # from here on it never reads
        got = lambda: sum(a == "a" for _, a in reader.got)  # noqa: E731
        sent = lambda: m.value("sbd_frames_published_total", {"topic": "denoised"})  # noqa: E731

        def send_paced(upto: int) -> None:
            """Frames n .. upto-1, 8 at a time, each 8 waited for at the reader: its own pipe (16
            messages) never fills, so every frame counted is one the stuck subscriber missed."""
            nonlocal n
            while n < upto:
                pub.publish(TOPIC_DENOISED, FrameHeader("a", n, 0.0, (128, 128), "float32"), data)
                n += 1
                if n % 8 == 0 or n == upto:
                    assert wait_until(lambda k=n: got() == k, timeout=30), (got(), n, full())

        with caplog.at_level(logging.DEBUG, "sbd_stream.sinks.publisher"):
            while not full() and n < 4000:
                send_paced(n + 8)
            assert full() > 0, "no frame was counted as missed"
            first = full()
            send_paced(n + 200)  # it stays stuck: it misses all of them, without another WARNING
            assert sent() == n
    finally:
        pub.stop()
        pub.join(10)
        reader.close()
        stuck.close()
    assert full() == first == 1  # it never read again, so ZeroMQ never took it back: one episode
    assert m.value("sbd_publish_dropped_total", {"topic": "denoised"}) == 0
    assert m.value("sbd_publish_subscriber_full_total", {"topic": "llr"}) == 0
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1, warned
    assert "not keeping up" in warned[0] and "sbd_publish_subscriber_full_total" in warned[0]
    assert "publish.sndhwm" in warned[0] and "16 messages" in warned[0]


@pytest.mark.timeout(180)
def test_a_subscriber_that_falls_behind_again_and_again_is_counted_each_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A subscriber that reads in bursts, slower than the frames come: each time its queue is found
    full it is counted, each counted frame is one it really missed, and one WARNING says it."""
    m = Metrics()
    pub = Publisher(PublishSettings(endpoint="tcp://127.0.0.1:*", queue_frames=1000), m, "e")
    reader = Reader(pub.endpoint)
    slow = Reader(pub.endpoint, RCVHWM=1, RCVBUF=4096)
    full = lambda: m.value("sbd_publish_subscriber_full_total", {"topic": "denoised"})  # noqa: E731
    slow.thread.start()
    reader.thread.start()
    pub.start()
    data = np.zeros((256, 256), np.float32)  # 256 kB a frame
    n, cycles = 0, 4
    try:
        _subscribed(pub, slow)
        _subscribed(pub, reader)
        slow.stop.set()
        slow.thread.join(5)
        slow_got: list[int] = []
        got = lambda: sum(a == "a" for _, a in reader.got)  # noqa: E731
        with caplog.at_level(logging.DEBUG, "sbd_stream.sinks.publisher"):
            for c in range(cycles):
                before = full()
                while full() == before and n < 4000:  # until its queue is found full once more
                    pub.publish(TOPIC_DENOISED, FrameHeader("a", n, 0.0, (256, 256), "float32"), data)
                    n += 1
                    if n % 8 == 0:
                        assert wait_until(lambda k=n: got() == k, timeout=30), (got(), n)
                assert full() == before + 1, f"cycle {c}: not counted again"
                assert wait_until(lambda k=n: got() == k, timeout=30), (got(), n)
                while slow.sock.poll(500):  # it reads all it has: ZeroMQ takes it back
                    _, header, *_ = slow.sock.recv_multipart()
                    if json.loads(header)["acq"] == "a":
                        slow_got.append(json.loads(header)["seq"])
    finally:
        pub.stop()
        pub.join(10)
        reader.close()
        slow.close()
    assert full() == cycles
    counted = [
        int(re.search(r"full at denoised (\d+) of a", r.getMessage()).group(1))  # type: ignore[union-attr]
        for r in caplog.records
        if "not keeping up" in r.getMessage()
    ]
    assert len(counted) == cycles and not set(counted) & set(slow_got), (counted, slow_got)
    assert len(slow_got) < n - cycles  # it missed more than were counted: the counter is a lower bound
    said = [r for r in caplog.records if "not keeping up" in r.getMessage()]
    assert [r.levelno for r in said] == [logging.WARNING] + [logging.DEBUG] * (cycles - 1)
