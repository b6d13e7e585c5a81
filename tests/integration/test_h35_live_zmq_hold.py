"""A ZeroMQ port held before the engine loads stays held up to the publisher's and receiver's own bind.

Why (audit h35): ``service.build.opening`` closed the holder (``cli.service_start.holding_ports``)
before the publisher or receiver was even made, so while they made their context and socket, read
CURVE keys, started the authenticator and logged, the port was free and another program could take
it; libzmq's bind then failed with "Address already in use" after the engine had loaded. Now each
closes the holder right before its ``bind``.

The third party is real: a handler on the log line both emit just before binding (the warning that a
non-loopback bind is "reachable from other machines", ``security.warn_if_exposed``) tries to bind and
listen on the port, as another server would. Before the fix it got the port and the service's bind
failed; now it is refused and the service binds. Real sockets on 0.0.0.0 (the warning needs a
non-loopback bind), held only for the test.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import zmq
from conftest import free_port

from sbd_stream.cli.service_start import holding_ports
from sbd_stream.config import ServiceSettings
from sbd_stream.metrics import Metrics
from sbd_stream.service.build import opening
from sbd_stream.sinks.publisher import Publisher
from sbd_stream.sources.receiver import open_receiver

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


class ThirdParty(logging.Handler):
    """On the "reachable from other machines" warning: bind and listen on ``port`` as another server."""

    def __init__(self, port: int) -> None:
        super().__init__(logging.WARNING)
        self.port = port
        self.tries: list[int] = []  # 0: it got the port; else the errno it was refused with
        self.sock: socket.socket | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if "reachable from other machines" not in record.getMessage():
            return
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", self.port))
            s.listen()
        except OSError as e:
            s.close()
            self.tries.append(e.errno or -1)
            return
        self.tries.append(0)
        self.sock = s  # kept, as another server would: the service's bind then meets it

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        super().close()


@contextmanager
def third_party(port: int) -> Iterator[ThirdParty]:
    handler = ThirdParty(port)
    security_log = logging.getLogger("sbd_stream.security")
    security_log.addHandler(handler)
    try:
        yield handler
    finally:
        security_log.removeHandler(handler)
        handler.close()


def _settings(output: str, input: str) -> ServiceSettings:
    return ServiceSettings(
        metrics={"enabled": False},
        viewer={"enabled": False},
        publish={"endpoint": output},
        ingest={"endpoint": input, "mode": "bind"},
        record={"enabled": False},
    )


def test_the_publishers_port_is_held_until_its_bind() -> None:
    port = free_port()
    output = f"tcp://0.0.0.0:{port}"
    s = _settings(output, "tcp://127.0.0.1:*")
    with holding_ports(s), third_party(port) as other:
        with opening("publish.endpoint", output):  # as service.build.make_sinks opens it
            pub = Publisher(s.publish, Metrics(), "test-engine")
        try:
            assert other.tries == [errno.EADDRINUSE]  # still held when the warning came, just before bind
            assert pub.sock.getsockopt_string(zmq.LAST_ENDPOINT) == output
        finally:
            pub.release_unstarted()


def test_the_receivers_port_is_held_until_its_bind() -> None:
    port = free_port()
    input = f"tcp://0.0.0.0:{port}"
    s = _settings("tcp://127.0.0.1:*", input)
    with holding_ports(s), third_party(port) as other:
        with opening("ingest.endpoint", input):  # as service.build.build_pipeline opens it
            rec = open_receiver(s.ingest, Metrics(), lambda frame: None)
        try:
            assert other.tries == [errno.EADDRINUSE]
            assert rec.endpoint == input
        finally:
            rec.close()
