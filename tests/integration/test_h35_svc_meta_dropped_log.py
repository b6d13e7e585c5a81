"""An output header over 64 KiB is logged once at WARNING, not once per frame (audit h35, D8).

Why: a bridge that sends a large ``meta`` with every frame (the docs allow up to the 64 KiB input header)
makes every output header pass the limit once the engine id is added, and the publisher wrote "header is
N bytes, the limit is 65536; sent without the producer's meta" at WARNING for each: 40 lines a second at
40 Hz, where the other per-event conditions log their first at WARNING, later ones at DEBUG and a sum
once a minute (``log_limit``). Every frame is still sent, its ``meta.meta_dropped`` saying what went.
Real ZeroMQ on loopback: the in-process publisher and a subscriber.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import zmq

from sbd_stream.config import PublishSettings
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import MAX_HEADER_BYTES, TOPIC_DENOISED, FrameHeader, decode
from sbd_stream.sinks.publisher import Publisher

pytestmark = pytest.mark.integration

LOGGER = "sbd_stream.sinks.publisher"
LINE = "; sent without the producer's meta"  # each output's line, not the summary
FRAMES = 20


def test_output_header_over_the_limit_warns_once_then_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    metrics = Metrics()
    pub = Publisher(PublishSettings(endpoint="tcp://127.0.0.1:*"), metrics, "engine-x")
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.connect(pub.endpoint)
    sub.subscribe(b"denoised")
    data = np.ones((16, 16), np.float32)
    big = {"detector": "K2", "pad": "x" * MAX_HEADER_BYTES}  # every output header passes 64 KiB
    got: list[dict] = []
    pub.start()
    try:
        probe = FrameHeader("probe", 0, 1.0, (16, 16), "uint16")
        for _ in range(100):  # until the subscription is in place (a PUB drops for a slow joiner)
            pub.publish(TOPIC_DENOISED, probe, data)
            if sub.poll(200):
                break
        else:
            pytest.fail("the subscriber never got a probe frame")
        while sub.poll(200):  # the probes still on their way
            sub.recv_multipart()
        for seq in range(FRAMES):
            pub.publish(TOPIC_DENOISED, FrameHeader("big", seq, 1.0, (16, 16), "uint16", meta=big), data)
        while len(got) < FRAMES and sub.poll(5000):
            msg = decode(sub.recv_multipart(), max_payload=4 * data.nbytes)
            if msg.header.acq == "big":
                got.append(msg.header.meta)
    finally:
        pub.stop()
        pub.join(30)  # its held-back lines summed up now
        sub.close(0)
        ctx.term()
    assert len(got) == FRAMES  # every frame sent, each saying what went
    assert all("pad" not in m and "producer's meta" in m["meta_dropped"] for m in got), got[0]
    # each one counted (session 36: a dashboard saw nothing; the log sums them once a minute)
    assert metrics.value("sbd_publish_meta_dropped_total", {"topic": "denoised"}) == FRAMES
    assert metrics.value("sbd_publish_meta_dropped_total", {"topic": "llr"}) == 0
    said = [r for r in caplog.records if r.name == LOGGER and LINE in r.getMessage()]
    assert [r.levelno for r in said] == [logging.WARNING] + [logging.DEBUG] * (FRAMES - 1), [
        (r.levelname, r.getMessage()[:80]) for r in said
    ]
    assert "big/0: header is" in said[0].getMessage()
    summary = [
        r for r in caplog.records if r.name == LOGGER and "more outputs sent without" in r.getMessage()
    ]
    assert [(r.levelno, r.getMessage().split()[0]) for r in summary] == [(logging.WARNING, str(FRAMES - 1))]
