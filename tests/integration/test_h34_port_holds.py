"""The ports a command holds from before its engine loads are held for real and taken over by the service.

``cli.service_start.holding_ports`` binds them before the engine loads (audit h34: a port in use was
found only after the load). A probe that bound and closed again would leave the port to whoever binds
next during the seconds of load; these tests show another socket cannot bind a held port, that the
service's own HTTP server adopts it (binding it afresh would fail: the holder listens), that ZeroMQ
binds it once the publisher has closed the holder right before its bind, that port 0 still gives each server a
free port of its own, and that leaving the block frees what no server took. Real sockets on 127.0.0.1.
"""

from __future__ import annotations

import errno
import socket
import threading
import urllib.request

import pytest
import zmq
from conftest import free_port

from sbd_stream.cli.service_start import holding_ports
from sbd_stream.config import ServiceSettings
from sbd_stream.httpd import take_held
from sbd_stream.metrics import Metrics, MetricsServer
from sbd_stream.service.build import EndpointError, opening
from sbd_stream.sinks.publisher import Publisher

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def _settings(metrics_port: int, viewer_port: int, output: str = "tcp://127.0.0.1:*") -> ServiceSettings:
    return ServiceSettings(
        metrics={"enabled": True, "port": metrics_port},
        viewer={"enabled": True, "port": viewer_port},
        publish={"endpoint": output},
        ingest={"endpoint": "tcp://127.0.0.1:1", "mode": "connect"},
        record={"enabled": False},
    )


def _taken(port: int) -> bool:
    """Whether another socket (set up as a server's: SO_REUSEADDR) is refused ``127.0.0.1:port``."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError as e:
            assert e.errno == errno.EADDRINUSE, e
            return True
    return False


def _get(port: int, path: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return int(r.status)


def test_a_held_http_port_is_held_and_adopted_by_the_server() -> None:
    metrics_port, viewer_port = free_port(), free_port()
    with holding_ports(_settings(metrics_port, viewer_port)):
        assert _taken(metrics_port) and _taken(viewer_port)  # held, not probed and let go
        server = MetricsServer(Metrics().registry, "127.0.0.1", metrics_port)  # adopts the held socket
    threading.Thread(target=server.run, daemon=True).start()
    try:
        assert server.port == metrics_port
        assert not _taken(viewer_port)  # no viewer took it: released when the block ended
        assert _get(server.port, "/metrics") == 200  # the adopted socket serves after the block
    finally:
        server.close()
    assert not _taken(metrics_port)


def test_port_0_gives_each_server_a_free_port_of_its_own() -> None:
    """Metrics and viewer both on port 0 of 127.0.0.1: two held sockets, one each, in the order asked."""
    from sbd_stream.config import ViewerSettings
    from sbd_stream.sinks.viewer.server import Viewer

    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.bind("tcp://127.0.0.1:*")
    try:
        with holding_ports(_settings(0, 0)):
            server = MetricsServer(Metrics().registry, "127.0.0.1", 0)
            viewer = Viewer(
                ViewerSettings(port=0), output_endpoint=pub.getsockopt_string(zmq.LAST_ENDPOINT)
            ).start()
            assert take_held(("http", "127.0.0.1", 0)) is None  # both held sockets were taken over
        try:
            viewer_port = int(viewer.url.rstrip("/").rsplit(":", 1)[1])
            assert 0 not in (server.port, viewer_port) and server.port != viewer_port
            assert _get(viewer_port, "/") == 200
        finally:
            viewer.close()
            server.close()
    finally:
        pub.close(0)


def test_a_held_zmq_endpoint_is_let_go_only_for_its_own_bind() -> None:
    port = free_port()
    output = f"tcp://127.0.0.1:{port}"
    s = _settings(0, 0, output)
    with holding_ports(s):
        assert _taken(port)
        with opening("publish.endpoint", output):  # the publisher closes the holder, then binds (h35)
            pub = Publisher(s.publish, Metrics(), "test-engine")
        try:
            assert pub.endpoint == output
        finally:
            pub.release_unstarted()


def test_a_port_in_use_is_an_endpoint_error_naming_the_setting_and_nothing_stays_held() -> None:
    free = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(EndpointError) as e, holding_ports(_settings(free, port)):
            pass
    assert str(e.value) == (
        f"viewer.port 127.0.0.1:{port}: Address already in use "
        "(another sbd-stream? choose another port, or 0 for any free port)"
    )
    assert not _taken(free)  # the metrics port held before the viewer's failed is free again


def test_two_settings_on_one_port_are_named_as_such() -> None:
    """``--metrics-port P --viewer-port P``: the viewer's bind failed once the engine had loaded, as if
    another program held P; now it is refused up front, naming the other setting."""
    port = free_port()
    with pytest.raises(EndpointError) as e, holding_ports(_settings(port, port)):
        pass
    assert str(e.value) == (
        f"viewer.port 127.0.0.1:{port}: Address already in use "
        "(the same port as metrics.port: give each its own)"
    )
    assert not _taken(port)
