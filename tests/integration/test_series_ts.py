"""A ``series_start`` / ``series_end`` without ``ts``, through a real service on loopback.

An auditor's Node.js bridge sent them without ``ts``: they were accepted and republished with
``"ts": 0.0`` (1 January 1970). ``ts`` is optional on series messages and defaults to the time the
service received the message (docs/wire-format.md).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from conftest import await_subscriber, make_settings, probe_through_service

from sbd_stream.engines.denoiser import Denoiser
from sbd_stream.protocol import encode_frame
from sbd_stream.service.build import build_pipeline
from sbd_stream.service.demo import Collector

pytestmark = pytest.mark.integration


def test_series_messages_without_ts_are_republished_with_their_time_of_receipt(
    tmp_path: Path, denoiser: Denoiser
) -> None:
    ctx = zmq.Context.instance()
    bridge = ctx.socket(zmq.PUB)
    bridge.setsockopt(zmq.LINGER, 0)
    port = bridge.bind_to_random_port("tcp://127.0.0.1")
    pipe = build_pipeline(make_settings(tmp_path, f"tcp://127.0.0.1:{port}"), denoiser, context=ctx)
    pipe.start()
    assert pipe.publisher is not None
    col = Collector(pipe.publisher.endpoint, context=ctx).start()
    try:
        await_subscriber(pipe.publisher, col)
        probe_through_service(bridge.send_multipart, col)
        before = time.time()
        bridge.send_multipart([b"series_start", b'{"v":1,"acq":"nots"}', b""])
        bridge.send_multipart(encode_frame(np.zeros((32, 32), np.uint16), "nots", 0, before))
        bridge.send_multipart([b"series_end", b'{"v":1,"acq":"nots","meta":{}}', b""])
        assert col.series_end.wait(30), "series_end never came back"
        after = time.time()
    finally:
        pipe.stop()
        col.close()
        bridge.close()
    series = [m for m in col.messages if m.acq == "nots" and m.topic != b"denoised"]
    assert [m.topic for m in series] == [b"series_start", b"series_end"]
    for m in series:
        assert before <= m.header.ts <= after, (m.topic, m.header.ts)
    assert pipe.metrics.value("sbd_frames_malformed_total", {"reason": "bad_ts"}) == 0
