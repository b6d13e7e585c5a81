"""The viewer page and /metrics refuse a foreign ``Host`` on loopback and cut off a trickling peer.

Audit h30 (security): both answered ``Host: attacker.example`` with the frames' status and the
metrics, so a web page opened on the microscope PC could re-point its own name at 127.0.0.1 (DNS
rebinding) and read them as same-origin data; and a peer sending one header line every few tenths
of a second kept its connection (and with 64 of them the whole server) past ``timeout_s`` for ever,
since the timeout applied to each read only. Real servers and sockets on loopback.
"""

from __future__ import annotations

import http.client
import http.server
import socket
import threading

import pytest

from sbd_stream.httpd import BoundedHTTPServer, host_allowed
from sbd_stream.metrics import Metrics

pytestmark = pytest.mark.integration


def _get(port: int, path: str, host: str | None) -> tuple[int, bytes]:
    """Status and body of ``GET path`` with the ``Host`` header ``host`` (None: no Host header)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.putrequest("GET", path, skip_host=True)
        if host is not None:
            c.putheader("Host", host)
        c.endheaders()
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


FOREIGN = ["attacker.example", "attacker.example:8090", "127.0.0.1.nip.io:8090", "evil.com:80", "10.0.0.7"]
LOCAL = ["127.0.0.1:{port}", "localhost:{port}", "localhost", "[::1]:{port}", "127.0.0.2:9000", None]


@pytest.mark.timeout(60)
def test_viewer_refuses_a_foreign_host_and_serves_loopback_names(viewer_port: int) -> None:
    for host in FOREIGN:
        for path in ("/api/status", "/", "/image/raw.png"):
            code, body = _get(viewer_port, path, host)
            assert code == 421, (host, path, code)
            assert b"series" not in body
    for host in LOCAL:
        code, _ = _get(viewer_port, "/api/status", None if host is None else host.format(port=viewer_port))
        assert code == 200, host


@pytest.mark.timeout(60)
def test_metrics_refuse_a_foreign_host_and_serve_loopback_names() -> None:
    m = Metrics()
    port = m.serve(port=0)
    try:
        for host in FOREIGN:
            for path in ("/metrics", "/healthz"):
                code, body = _get(port, path, host)
                assert code == 421, (host, path, code)
                assert b"sbd_" not in body and b"stages" not in body
        code, body = _get(port, "/metrics", f"127.0.0.1:{port}")
        assert code == 200 and b"sbd_frames_received" in body
    finally:
        m.shutdown()


def test_a_server_exposed_on_purpose_answers_any_host() -> None:
    """Bound beyond loopback, the names it is reached by are unknown here: every Host is answered."""
    for bound in ("0.0.0.0", "", "::", "192.0.2.10"):
        assert host_allowed(bound, "gpu-host.facility.org:8090")
    for bound in ("127.0.0.1", "::1", "localhost"):
        assert not host_allowed(bound, "gpu-host.facility.org:8090")
        assert host_allowed(bound, "LOCALHOST.:8090")
        assert host_allowed(bound, "viewer.localhost")


@pytest.mark.timeout(60)
def test_a_peer_trickling_its_request_is_cut_off_at_the_deadline() -> None:
    """One header line every 0.2 s never lets a 1 s read timeout expire; the deadline still ends it."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    srv = BoundedHTTPServer(("127.0.0.1", 0), Handler, max_connections=4, timeout_s=1.0)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    c = socket.create_connection(("127.0.0.1", srv.server_address[1]), timeout=5)
    try:
        c.sendall(b"GET / HTTP/1.1\r\n")
        cut = False
        for _ in range(40):  # 8 s of trickling: eight times the deadline
            c.settimeout(0.2)
            try:
                if c.recv(1) == b"":
                    cut = True
                    break
            except TimeoutError:
                pass
            except (ConnectionResetError, BrokenPipeError):
                cut = True
                break
            try:
                c.sendall(b"X-Trickle: a\r\n")
            except (ConnectionResetError, BrokenPipeError):
                cut = True
                break
        assert cut, "a trickling peer kept its connection past the deadline"
    finally:
        c.close()
        srv.shutdown()
        srv.server_close()
