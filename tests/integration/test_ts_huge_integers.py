"""Integers too large for a float in ``ts`` / ``exposure_s``, sent over a real socket (audit "clocks", 1).

JSON and CBOR integers have any size. ``math.isfinite(10**400)`` raises ``OverflowError``, so every such
header was an ``internal_error`` with an ERROR traceback (200 frames: 4,604 log lines) instead of
``bad_ts``, counted and logged once. Past 4300 digits ``int()`` itself raises ValueError. DECTRIS
stream v2 had the same hole in its ``[numerator, denominator]`` times.
"""

from __future__ import annotations

import json
import logging

import cbor2
import numpy as np
import pytest
import zmq
from conftest import wait_until

from sbd_stream.config import IngestSettings, SocketMode
from sbd_stream.frames import Frame
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import encode_frame
from sbd_stream.sources.dectris.sim import v2_image, v2_start
from sbd_stream.sources.receiver import open_receiver

pytestmark = pytest.mark.integration

BIG = "1" + "0" * 400  # 1e400 as a JSON integer: no float holds it
HUGE = "1" + "0" * 5000  # past Python's 4300-digit limit of int()


def _frame_header(seq: int, ts: str = "1700000000.5", exposure: str = "0.01") -> bytes:
    return (
        f'{{"v":1,"acq":"big","seq":{seq},"ts":{ts},"exposure_s":{exposure},"shape":[4,4],"dtype":"uint16"}}'
    ).encode()


@pytest.mark.timeout(60)
def test_integer_ts_and_exposure_too_large_for_a_float_are_bad_ts_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.XPUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    m = Metrics()
    got: list[Frame] = []
    ing = open_receiver(
        IngestSettings(endpoint=f"tcp://127.0.0.1:{port}", mode=SocketMode.connect), m, got.append, None, ctx
    )
    ing.start()
    payload = b"\0" * 32
    try:
        assert pub.poll(20_000), "the receiver never subscribed"
        pub.recv_multipart()
        with caplog.at_level(logging.DEBUG, "sbd_stream"):
            for seq, ts in enumerate((BIG, "-" + BIG, HUGE)):
                pub.send_multipart([b"frame", _frame_header(seq, ts=ts), payload])
            pub.send_multipart([b"series_start", f'{{"v":1,"acq":"big","ts":{BIG}}}'.encode(), b""])
            pub.send_multipart([b"frame", _frame_header(3, exposure=BIG), payload])
            for seq in range(4, 104):  # the audit's flood: one traceback per frame
                pub.send_multipart([b"frame", _frame_header(seq, ts=BIG), payload])
            pub.send_multipart(encode_frame(np.zeros((4, 4), np.uint16), "big", 104, 1700000001.0))
            assert wait_until(lambda: len(got) == 1, 20)
    finally:
        ing.stop()
        ing.join(5)
        pub.close(0)
    assert [f.header.seq for f in got] == [104]
    bad = {r: m.value("sbd_frames_malformed_total", {"reason": r}) for r in ("bad_ts", "bad_exposure")}
    assert bad == {"bad_ts": 104.0, "bad_exposure": 1.0}
    assert not m.value("sbd_frames_malformed_total", {"reason": "internal_error"})
    assert not [r for r in caplog.records if r.exc_info is not None or r.levelno >= logging.ERROR]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("bad_ts" in w for w in warned) == 1, warned  # once; the other 103 at DEBUG


@pytest.mark.timeout(60)
def test_dectris_v2_times_too_large_for_a_float_are_counted_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Stream v2 over a real PUB / SUB: ``start_time = [10**400, 1]`` raised OverflowError in the decoder,
    and a bignum ``image_id`` past 4300 digits could not even be printed in the refusal."""
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.XPUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    m = Metrics()
    got: list[Frame] = []
    inp = {"dialect": "dectris-stream-v2", "socket_type": "sub", "series_timeout_s": 5.0}
    settings = IngestSettings.model_validate(
        {"endpoint": f"tcp://127.0.0.1:{port}", "mode": "connect", "input": inp}
    )
    ing = open_receiver(settings, m, got.append, None, ctx)
    ing.start()
    img = np.zeros((4, 4), np.uint16)

    def image(i: int, **bad: object) -> list[bytes]:
        obj = cbor2.loads(v2_image(img, 7, "u7", i)[3:])
        return [cbor2.dumps(obj | bad)]

    try:
        assert pub.poll(20_000), "the receiver never subscribed"
        pub.recv_multipart()
        with caplog.at_level(logging.DEBUG, "sbd_stream"):
            pub.send_multipart([v2_start(7, "u7", (4, 4), "uint16", 10)])
            pub.send_multipart(image(0, start_time=[10**400, 1]))
            pub.send_multipart(image(1, start_time=[10**5000, 3]))
            pub.send_multipart(image(2, real_time=[10**400, 1]))
            pub.send_multipart(image(3, image_id=10**5000))
            pub.send_multipart(image(4))
            assert wait_until(lambda: len(got) == 1, 20)
    finally:
        ing.stop()
        ing.join(5)
        pub.close(0)
    assert [f.header.seq for f in got] == [4]
    reasons = {r: m.value("sbd_frames_malformed_total", {"reason": r}) for r in ("bad_ts", "bad_exposure")}
    assert reasons == {"bad_ts": 2.0, "bad_exposure": 1.0}
    assert m.value("sbd_frames_malformed_total", {"reason": "bad_seq"}) == 1
    assert not m.value("sbd_frames_malformed_total", {"reason": "internal_error"})
    assert not [r for r in caplog.records if r.exc_info is not None or r.levelno >= logging.ERROR]
    assert json.dumps([r.getMessage() for r in caplog.records])  # every line could be printed
