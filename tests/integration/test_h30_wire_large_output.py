"""The outputs of a large but valid input frame are published (real ZeroMQ on loopback).

Audit h30 (independent wire clients): a 6000 x 6000 uint8 frame (36 MB, under the default
``ingest.max_payload_bytes`` of 57 MB) was received, denoised and recorded, but its ``denoised`` and
``llr`` were never published: they are float32, 144 MB, and ``protocol.encode_frame`` capped every message
at 2 x the *default* receive limit, so the publisher raised ``ProtocolError: too_large`` for each (counted
as a publisher stage error and a publish drop). The encoder's only bound is now the largest frame wire
format v1 can describe (16384 x 16384 x 4 bytes).
"""

from __future__ import annotations

import numpy as np
import pytest
import zmq

from sbd_stream.config import PublishSettings
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import TOPIC_DENOISED, TOPIC_FRAME, FrameHeader, decode, encode_frame
from sbd_stream.sinks.publisher import Publisher

pytestmark = pytest.mark.integration

SIDE = 5400  # 29.2 MB as uint8 (accepted by default); 116.6 MB as float32, over the old 113.9 MB cap


@pytest.mark.timeout(120)
def test_the_float32_output_of_a_large_valid_uint8_frame_reaches_a_subscriber() -> None:
    raw = np.zeros((SIDE, SIDE), np.uint8)
    accepted = decode(encode_frame(raw, "big", 0, 1.0, topic=TOPIC_FRAME))  # the service takes the input
    m = Metrics()
    pub = Publisher(PublishSettings(endpoint="tcp://127.0.0.1:*"), m, "e")
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.connect(pub.endpoint)
    sub.subscribe(b"denoised")
    denoised = np.ones((SIDE, SIDE), np.float32)
    pub.start()
    try:
        header = FrameHeader("big", 0, 1.0, accepted.header.shape, "uint8")
        parts = None
        for _ in range(100):  # until the subscription is in place (a PUB drops for a slow joiner)
            pub.publish(TOPIC_DENOISED, header, denoised)
            if sub.poll(500):
                parts = sub.recv_multipart()
                break
        errors = m.value("sbd_stage_item_errors_total", {"stage": "publisher"})
        assert parts is not None, f"nothing published ({errors} publisher errors)"
    finally:
        pub.stop()
        pub.join(30)
        sub.close(0)
        ctx.term()
    msg = decode(parts, max_payload=4 * SIDE * SIDE)  # a subscriber allows 4x the input frame (docs)
    assert msg.header.shape == (SIDE, SIDE) and msg.header.dtype == "float32"
    assert float(msg.data[0, 0]) == 1.0
