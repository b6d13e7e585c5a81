"""``publish.dtype = "float16"`` on real ZeroMQ sockets on loopback: values beyond +-65504 are clipped.

The audit (equivalence, defect 1): with the shipped deployment config (float16 on the wire) a denoised
value above 65504 went out as +inf, with numpy's bare "overflow encountered in cast" on stderr and no
metric, while the recording clipped the same pixel to 65504 and logged that "published frames are
float32 and unchanged". The publisher now applies the recorder's policy and the recorder's line no
longer says what the wire holds.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import zmq
from conftest import wait_until

from sbd_stream.config import PublishSettings
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import TOPIC_DENOISED, TOPIC_LLR, FrameHeader, FrameMessage, decode
from sbd_stream.sinks.publisher import OutputItem, Publisher
from sbd_stream.sinks.stored_dtype import RECORDED, StoredDtype

pytestmark = pytest.mark.integration

PROBE = 99
HOT = np.array([[1.5, 7e4, -1e5], [np.nan, np.inf, 65504.0]], np.float32)


def _header(seq: int) -> FrameHeader:
    return FrameHeader("a", seq, 0.0, (2, 3), "float32")


def _connected(pub: Publisher, sub: zmq.Socket) -> None:
    """Probe with llr frames (never clipped) until one arrives: the subscription is in place."""
    for _ in range(200):
        pub.publish(TOPIC_LLR, _header(PROBE), np.zeros((2, 3), np.float32))
        if sub.poll(100):
            return
    raise AssertionError("the subscriber never got a message")


@pytest.mark.timeout(60)
def test_float16_publish_clips_beyond_65504_counts_and_logs_once_instead_of_sending_inf(
    caplog: pytest.LogCaptureFixture,
) -> None:
    m = Metrics()
    pub = Publisher(PublishSettings(endpoint="tcp://127.0.0.1:*", dtype="float16"), m, "e")
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.connect(pub.endpoint)
    sub.subscribe(b"")
    got: list[FrameMessage] = []
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        pub.start()
        try:
            _connected(pub, sub)
            for seq in range(2):
                pub.publish(TOPIC_DENOISED, _header(seq), HOT)
            pub.publish(TOPIC_DENOISED, _header(2), np.full((2, 3), 3.25, np.float32))  # a normal frame
            pub.publish(TOPIC_LLR, _header(2), HOT)  # llr stays float32, values as computed
            while len(got) < 4 and sub.poll(10_000):
                msg = decode(sub.recv_multipart())
                assert isinstance(msg, FrameMessage)
                if msg.header.seq != PROBE:  # a late probe
                    got.append(msg)
        finally:
            pub.stop()
            pub.join(10)
            sub.close(0)
            ctx.term()
    expected = [(TOPIC_DENOISED, 0), (TOPIC_DENOISED, 1), (TOPIC_DENOISED, 2), (TOPIC_LLR, 2)]
    assert [(g.topic, g.header.seq) for g in got] == expected
    assert [str(w.message) for w in caught] == []  # no "overflow encountered in cast" on stderr
    for g in got[:2]:
        assert g.header.dtype == "float16" and g.data.dtype == np.float16
        assert not np.isinf(g.data).any()
        np.testing.assert_array_equal(g.data[0], np.float16([1.5, 65504, -65504]))
        assert np.isnan(g.data[1, 0]) and g.data[1, 1] == 65504 and g.data[1, 2] == 65504  # NaN kept
    assert (got[2].data == np.float16(3.25)).all()
    assert got[3].data.dtype == np.float32 and np.isinf(got[3].data[1, 1]) and got[3].data[0, 1] == 7e4
    assert m.value("sbd_published_clipped_pixels_total") == 2 * 3  # 7e4, -1e5, inf in each hot frame
    assert m.value("sbd_recorded_clipped_pixels_total") == 0
    said = [r.getMessage() for r in caplog.records if "clipped" in r.getMessage()]
    assert len(said) == 1, said  # logged once
    assert "in the published frames" in said[0] and "sbd_published_clipped_pixels_total" in said[0]
    assert "frame 0 of a" in said[0]


@pytest.mark.timeout(60)
def test_float32_publish_sends_the_values_as_they_are() -> None:
    m = Metrics()
    pub = Publisher(PublishSettings(endpoint="tcp://127.0.0.1:*"), m, "e")
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.connect(pub.endpoint)
    sub.subscribe(TOPIC_DENOISED)
    pub.start()
    try:
        for _ in range(200):  # probes until the subscription is in place
            pub.submit(OutputItem(TOPIC_DENOISED, "a", 0, 0.0, HOT))
            if wait_until(lambda: sub.poll(0), timeout=0.1):
                break
        msg = decode(sub.recv_multipart())
    finally:
        pub.stop()
        pub.join(10)
        sub.close(0)
        ctx.term()
    assert isinstance(msg, FrameMessage) and msg.data.dtype == np.float32
    np.testing.assert_array_equal(msg.data, HOT)  # inf and 7e4 as computed: float32 holds them
    assert m.value("sbd_published_clipped_pixels_total") == 0


def test_the_recorders_line_does_not_say_the_published_frames_are_float32(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """It said "published frames are float32 and unchanged" also when ``publish.dtype`` was float16."""
    m = Metrics()
    with caplog.at_level(logging.WARNING):
        StoredDtype("float16", m, RECORDED)(HOT, "a", 3)
    (said,) = [r.getMessage() for r in caplog.records]
    assert "float32 and unchanged" not in said
    assert "in the recording" in said and "publish.dtype" in said and "float16 clipped the same way" in said
    assert m.value("sbd_recorded_clipped_pixels_total") == 3
