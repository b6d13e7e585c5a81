"""The service's own subscribers take every output the publisher may send (audit h30 follow-up).

Outputs are float32, up to 4x their input, and the publisher's encoder now sends any v1 frame
(``MAX_SIDE**2 * 4`` bytes, ``frames.MAX_OUTPUT_BYTES``). The demo's ``Collector`` decoded with the
input's default limit (57 MB), so every output of ``demo --shape 4096x4096`` (67 MB of float32) was
counted as malformed; the viewer took 512 MiB, so an output over 11585^2 pixels was refused there.
The Collector is checked over real ZeroMQ with one 4096^2 float32 message (the demo's case); the
viewer's decode with an 11586^2 float32 message made of untouched zero pages (calloc: no 537 MB
written) and its socket's message size limit.
"""

from __future__ import annotations

import numpy as np
import pytest
import zmq
from conftest import wait_until

from sbd_stream.config import ViewerSettings
from sbd_stream.frames import MAX_OUTPUT_BYTES
from sbd_stream.protocol import MAX_SIDE, TOPIC_DENOISED, TOPIC_SERIES_START, encode_frame, encode_series
from sbd_stream.service.demo import PROBE_ACQ, Collector, handshake
from sbd_stream.sinks.viewer.server import Viewer

pytestmark = pytest.mark.integration


@pytest.mark.timeout(120)
def test_the_demo_collector_takes_a_4096_square_float32_output() -> None:
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.bind("tcp://127.0.0.1:*")
    col = Collector(pub.getsockopt_string(zmq.LAST_ENDPOINT), keep_data=False, context=ctx).start()
    try:
        probe = lambda i: pub.send_multipart(encode_series(TOPIC_SERIES_START, PROBE_ACQ, 0.0, {"probe": i}))  # noqa: E731
        handshake(probe, lambda: col.probe_seen)
        out = np.zeros((4096, 4096), np.float32)  # 67 MB: over the input's 57 MB default
        pub.send_multipart(encode_frame(out, "big", 0, 1.0, topic=TOPIC_DENOISED, engine="e"))
        assert wait_until(lambda: col.frames(TOPIC_DENOISED) or col.malformed, 60)
        assert col.malformed == 0 and [m.seq for m in col.frames(TOPIC_DENOISED)] == [0]
    finally:
        col.close()
        pub.close(0)
        ctx.term()


def test_the_viewer_takes_the_largest_output_the_publisher_may_send() -> None:
    assert MAX_OUTPUT_BYTES == MAX_SIDE**2 * 4
    ctx = zmq.Context()
    v = Viewer(ViewerSettings(port=0), context=ctx)
    try:
        side = 11586  # 11586^2 float32 = 537 MB > 512 MiB
        out = np.zeros((side, side), np.float32)  # calloc'd: never written, decode reads only the header
        v._accept(encode_frame(out, "big", 0, 1.0, topic=TOPIC_DENOISED, engine="e"))
        assert v.store.received["denoised"] == 1
        v._subscribe("tcp://127.0.0.1:9", (TOPIC_DENOISED,), None, ("denoised",))
        assert v._socks[0].getsockopt(zmq.MAXMSGSIZE) >= MAX_SIDE**2 * 4  # its payload part passes too
    finally:
        v._close_sockets()
        ctx.term()
