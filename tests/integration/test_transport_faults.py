"""A message part over the input socket's maximum size, in connect and bind mode, wire v1 and DECTRIS.

libzmq refuses such a part by dropping the peer's connection. A connecting socket never re-dialled
after that (the input went silent for good, with no log line and no counter); now the receiver sees
it on the socket monitor, counts it (``sbd_frames_malformed_total{reason="oversized"}``,
``sbd_input_disconnects_total{cause="refused"}``) and re-creates the socket. A bound socket is
re-dialled by its peer; there the disconnect is counted as ``cause="closed"``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import zmq

from sbd_stream.config import IngestSettings
from sbd_stream.frames import Frame, SeriesMessage
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import encode_frame
from sbd_stream.sources.dectris.sim import v1_end, v1_series
from sbd_stream.sources.receiver import Receiver, max_message_bytes, open_receiver

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

MAX_PAYLOAD = 64 * 64 * 2
HUGE = b"\0" * (max_message_bytes(MAX_PAYLOAD) + 1)


def _wait(pred: Callable[[], Any], timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while not (ok := bool(pred())) and time.monotonic() < end:
        time.sleep(0.02)
    return ok


class Sink:
    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.series: list[SeriesMessage] = []

    def acqs(self) -> set[str]:
        return {f.header.acq for f in self.frames}


def _receiver(mode: str, endpoint: str, dialect: str, sink: Sink) -> Receiver:
    inp: dict[str, Any] = {"dialect": dialect}
    if dialect != "wire-v1":
        inp["socket_type"] = "pull"
    settings = IngestSettings.model_validate(
        {"endpoint": endpoint, "mode": mode, "max_payload_bytes": MAX_PAYLOAD, "rcvhwm": 0, "input": inp}
    )
    ing = open_receiver(settings, Metrics(), sink.frames.append, sink.series.append)
    ing.start()
    return ing


def _probe(pub: zmq.Socket, sink: Sink, acq: str) -> None:
    """PUB drops what it sends before a subscription arrives: send until one frame got through."""
    arr = np.zeros((8, 8), np.uint16)
    for seq in range(500):
        pub.send_multipart(encode_frame(arr, acq, seq, 0.0))
        if _wait(lambda: acq in sink.acqs(), 0.05):
            return
    pytest.fail(f"nothing received after the {acq} probes")


@pytest.mark.parametrize("mode", ["connect", "bind"])
def test_wire_v1_oversized_part_is_counted_and_reception_resumes(mode: str) -> None:
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    sink = Sink()
    if mode == "connect":  # the bridge binds, the service connects (the default)
        port = pub.bind_to_random_port("tcp://127.0.0.1")
        ing = _receiver("connect", f"tcp://127.0.0.1:{port}", "wire-v1", sink)
    else:
        ing = _receiver("bind", "tcp://127.0.0.1:*", "wire-v1", sink)
        pub.connect(ing.endpoint)
    m = ing.metrics
    try:
        _probe(pub, sink, "before")
        arr = np.arange(64, dtype=np.uint16).reshape(8, 8)
        for seq in range(20):  # sent ahead of the oversized part: all must still arrive
            pub.send_multipart(encode_frame(arr, "a", seq, 0.0))
        pub.send_multipart([b"frame", b"{}", HUGE])
        cause = "refused" if mode == "connect" else "closed"
        assert _wait(lambda: m.value("sbd_input_disconnects_total", {"cause": cause}))
        _probe(pub, sink, "after")
    finally:
        ing.stop()
        ing.join(5)
        pub.close(0)
    assert [f.header.seq for f in sink.frames if f.header.acq == "a"] == list(range(20))
    if mode == "connect":  # counted as a refused peer, and the socket was re-created
        assert m.value("sbd_frames_malformed_total", {"reason": "oversized"}) == 1
        assert m.value("sbd_input_reconnects_total") >= 1
    else:  # the peer re-dials a bound socket itself; libzmq gives no reason for the disconnect
        assert m.value("sbd_input_reconnects_total") == 0
        assert m.value("sbd_frames_malformed_total", {"reason": "oversized"}) == 0


@pytest.mark.parametrize("mode", ["connect", "bind"])
def test_dectris_pull_oversized_part_is_counted_and_the_next_series_arrives(mode: str) -> None:
    ctx = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDTIMEO, 20_000)  # PUSH waits (bounded) for a peer: nothing is dropped
    sink = Sink()
    if mode == "connect":  # a DCU binds PUSH, the service connects PULL
        port = push.bind_to_random_port("tcp://127.0.0.1")
        ing = _receiver("connect", f"tcp://127.0.0.1:{port}", "dectris-stream-v1", sink)
    else:
        ing = _receiver("bind", "tcp://127.0.0.1:*", "dectris-stream-v1", sink)
        push.connect(ing.endpoint)
    m = ing.metrics
    rng = np.random.default_rng(3)
    frames = [rng.poisson(0.45, (16, 16)).astype(np.uint16) for _ in range(4)]
    try:
        for msg in v1_series(frames, 7)[:-1]:
            push.send_multipart(msg)
        assert _wait(lambda: len(sink.frames) == 4)
        push.send_multipart([b'{"htype": "dimage-1.0"}', HUGE])
        cause = "refused" if mode == "connect" else "closed"
        assert _wait(lambda: m.value("sbd_input_disconnects_total", {"cause": cause}) >= 1)
        push.send_multipart(v1_end(7))
        for msg in v1_series(frames, 8):
            push.send_multipart(msg)
        assert _wait(lambda: sum(s.topic == b"series_end" for s in sink.series) == 2)
    finally:
        ing.stop()
        ing.join(5)
        push.close(0)
    assert [(f.header.acq, f.header.seq) for f in sink.frames] == [
        *(("dectris-7", i) for i in range(4)),
        *(("dectris-8", i) for i in range(4)),
    ]
    assert m.value("sbd_frames_malformed_total", {"reason": "oversized"}) == (mode == "connect")


def test_a_sender_restart_is_an_ordinary_disconnect_not_an_oversized_part() -> None:
    """libzmq re-dials after a peer went away; only a refused peer counts as oversized."""
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    sink = Sink()
    ing = _receiver("connect", f"tcp://127.0.0.1:{port}", "wire-v1", sink)
    m = ing.metrics
    try:
        _probe(pub, sink, "one")
        pub.close(0)
        assert _wait(lambda: m.value("sbd_input_disconnects_total", {"cause": "closed"}) >= 1)
        pub = ctx.socket(zmq.PUB)
        assert _wait(lambda: _bind(pub, port))
        _probe(pub, sink, "two")
    finally:
        ing.stop()
        ing.join(5)
        pub.close(0)
    assert m.value("sbd_frames_malformed_total", {"reason": "oversized"}) == 0
    assert m.value("sbd_input_disconnects_total", {"cause": "refused"}) == 0
    assert m.value("sbd_input_reconnects_total") == 0


def _bind(sock: zmq.Socket, port: int) -> bool:
    try:
        sock.bind(f"tcp://127.0.0.1:{port}")
    except zmq.ZMQError:
        return False
    return True
