"""A peer that connects while the engine loads is handshaken with, not reset: libzmq adopts the held port.

Why (audit h36): ``holding_ports`` listens on ``--output`` / a bound ``--input`` while the engine loads,
and the holder was closed right before libzmq's bind. A peer that had connected meanwhile (``merge``
started first, as docs/scale-out-nodes.md says; a bridge dialling a ``--bind-input`` service) sat in
the holder's backlog and was reset: its libzmq reported a failed handshake, and ``merge`` logged "the
CURVE handshake failed ... is this merge's public key ..." and counted ``cause="handshake"`` on every
normal start with no CURVE anywhere. Now the held socket itself is handed to libzmq (``ZMQ_USE_FD``,
``zmq_bind.bind_held``): the waiting connection is accepted and handshaken, and the port is never free.

Real sockets on loopback; the peer's own socket monitor says what its libzmq saw.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import zmq
from conftest import free_port
from zmq.utils.monitor import recv_monitor_message

from sbd_stream.cli.service_start import holding_ports
from sbd_stream.config import ServiceSettings
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import TOPIC_FRAME, encode_frame
from sbd_stream.sinks.publisher import Publisher
from sbd_stream.sources.receiver import open_receiver

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


def _settings(output: str, input: str) -> ServiceSettings:
    return ServiceSettings(
        metrics={"enabled": False},
        viewer={"enabled": False},
        publish={"endpoint": output},
        ingest={"endpoint": input, "mode": "bind", "input": {"socket_type": "pull"}},
        record={"enabled": False},
    )


def _events(monitor: zmq.Socket, until: float) -> list[int]:
    seen = []
    while time.monotonic() < until and monitor.poll(100):
        seen.append(int(recv_monitor_message(monitor)["event"]))
    return seen


def _connected_peer(ctx: zmq.Context, kind: int, endpoint: str) -> tuple[zmq.Socket, zmq.Socket]:
    """A peer connected (TCP) to the held port before the service binds it, with its monitor."""
    peer = ctx.socket(kind)
    monitor = peer.get_monitor_socket()
    if kind == zmq.SUB:
        peer.subscribe(b"")
    peer.connect(endpoint)
    seen = _events(monitor, time.monotonic() + 1.0)
    assert zmq.EVENT_CONNECTED in seen, seen  # in the holder's backlog now; no ZMTP yet
    return peer, monitor


def test_a_subscriber_waiting_on_the_held_output_is_handshaken_not_reset() -> None:
    output = f"tcp://127.0.0.1:{free_port()}"
    s = _settings(output, "tcp://127.0.0.1:*")
    ctx = zmq.Context()
    try:
        with holding_ports(s):
            sub, monitor = _connected_peer(ctx, zmq.SUB, output)
            pub = Publisher(s.publish, Metrics(), "test-engine")
        try:
            seen = _events(monitor, time.monotonic() + 2.0)
            assert not [e for e in seen if e & FAILED], seen  # before: HANDSHAKE_FAILED_NO_DETAIL
            assert zmq.EVENT_DISCONNECTED not in seen, seen
            assert zmq.EVENT_HANDSHAKE_SUCCEEDED in seen, seen
            assert pub.sock.getsockopt_string(zmq.LAST_ENDPOINT) == output
        finally:
            pub.release_unstarted()
            sub.close(0)
            monitor.close(0)
    finally:
        ctx.term()


def test_a_bridge_waiting_on_the_held_input_is_handshaken_and_its_frames_arrive() -> None:
    input = f"tcp://127.0.0.1:{free_port()}"
    s = _settings("tcp://127.0.0.1:*", input)
    ctx = zmq.Context()
    got: list[int] = []
    try:
        with holding_ports(s):
            push, monitor = _connected_peer(ctx, zmq.PUSH, input)
            data = np.ones((16, 16), np.uint16)
            for seq in range(3):  # queued before the service binds: none may be lost
                push.send_multipart(encode_frame(data, "a", seq, time.time(), topic=TOPIC_FRAME))
            metrics = Metrics()
            rec = open_receiver(s.ingest, metrics, lambda frame: got.append(frame.header.seq))
        try:
            rec.start()
            seen = _events(monitor, time.monotonic() + 2.0)
            deadline = time.monotonic() + 10
            while len(got) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not [e for e in seen if e & FAILED], seen
            assert zmq.EVENT_DISCONNECTED not in seen, seen
            assert sorted(got) == [0, 1, 2]
            assert metrics.value("sbd_input_disconnects_total", {"cause": "closed"}) == 0
        finally:
            rec.close()
            push.close(0)
            monitor.close(0)
    finally:
        ctx.term()
