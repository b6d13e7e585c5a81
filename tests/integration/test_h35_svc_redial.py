"""A connecting SUB input left idle still hears a PUB bridge that binds, waits 1 s and sends (audit h35, D6).

Why: libzmq backs its re-dials off up to ``RECONNECT_IVL_MAX``. At the 2000 ms the receiver used, a service
idle for more than ~3 s dialled a PUB only 1.2-1.9 s after its bind, so a bridge following the documented
"bind, wait 1 s, send" (docs/wire-format.md "Bridge pseudo-code") lost its series_start and, for a short
acquisition, every frame, silently: nothing was counted, the service never learnt the acquisition existed.

The four receivers start 0.5 s apart, so at the bind their re-dials lie at different phases of the
back-off: at a 2 s ceiling some of them are always more than 1 s from their next dial (the old code lost
2 of 4 acquisitions in every run checked), at 250 ms none is. Real sockets on loopback.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zmq
from conftest import free_port

from sbd_stream.config import IngestSettings, SocketMode
from sbd_stream.frames import Frame
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import SeriesMessage, encode_frame, encode_series
from sbd_stream.sources.receiver import RECONNECT_IVL_MAX_MS, Receiver, open_receiver

pytestmark = pytest.mark.integration

BRIDGE_WAIT_S = 1.0  # the documented wait after binding (wire-format.md; replay --publish --wait)
STAGGER_S = 0.5  # between the receivers' starts: their dials at spread phases of the back-off
IDLE_S = 4.5  # after the last start: the old 2 s ceiling is reached after ~3.4 s of refused dials
FRAMES = 5  # a short acquisition: all of it fits in the window the old back-off left deaf
DELIVERY_S = 5.0  # how long to wait for what was sent (loopback: milliseconds when it arrives at all)


class _Got:
    """What one receiver handed on: series topics and frame numbers, from its receive thread."""

    def __init__(self) -> None:
        self.series: list[bytes] = []
        self.seqs: list[int] = []
        self.lock = threading.Lock()

    def frame(self, f: Frame) -> None:
        with self.lock:
            self.seqs.append(f.header.seq)

    def series_msg(self, msg: SeriesMessage) -> None:
        with self.lock:
            self.series.append(msg.topic)

    def whole(self) -> bool:
        with self.lock:
            return self.series == [b"series_start", b"series_end"] and self.seqs == list(range(FRAMES))


def test_idle_connecting_input_hears_a_bridge_after_the_documented_wait() -> None:
    ctx = zmq.Context()
    ports = [free_port() for _ in range(4)]
    got = [_Got() for _ in ports]
    receivers: list[Receiver] = []
    pubs: list[zmq.Socket] = []
    try:
        for port, g in zip(ports, got, strict=True):
            settings = IngestSettings(
                endpoint=f"tcp://127.0.0.1:{port}", mode=SocketMode.connect, max_payload_bytes=64 * 64 * 2
            )
            r = open_receiver(settings, Metrics(), g.frame, g.series_msg, ctx)
            receivers.append(r)
            r.start()
            time.sleep(STAGGER_S)
        # the socket's own setting, not only the constant: a dial within the wait, whatever the phase
        ceiling = [r.sock.getsockopt(zmq.RECONNECT_IVL_MAX) for r in receivers]
        assert ceiling == [RECONNECT_IVL_MAX_MS] * 4
        assert RECONNECT_IVL_MAX_MS + 100 < BRIDGE_WAIT_S * 1000 / 2  # + libzmq's jitter, with room
        time.sleep(IDLE_S)  # the service waits between acquisitions, dialling bridges that are not up
        for port in ports:
            pub = ctx.socket(zmq.PUB)
            pub.setsockopt(zmq.LINGER, 1000)
            pub.bind(f"tcp://127.0.0.1:{port}")
            pubs.append(pub)
        time.sleep(BRIDGE_WAIT_S)
        arr = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
        for k, pub in enumerate(pubs):
            acq = f"short-{k}"
            pub.send_multipart(encode_series(b"series_start", acq, 0.0))
            for seq in range(FRAMES):
                pub.send_multipart(encode_frame(arr, acq, seq, float(seq)))
            pub.send_multipart(encode_series(b"series_end", acq, 0.0))
        deadline = time.monotonic() + DELIVERY_S
        while not all(g.whole() for g in got) and time.monotonic() < deadline:
            time.sleep(0.05)
        lost = {f"short-{k}": (g.series, g.seqs) for k, g in enumerate(got) if not g.whole()}
        assert not lost, f"acquisitions not received whole after the {BRIDGE_WAIT_S} s wait: {lost}"
    finally:
        for r in receivers:
            r.stop()
        for r in receivers:
            r.join(5.0)
        for pub in pubs:
            pub.close(linger=0)
        ctx.term()
