"""A refused ``Host`` gets the 421 and nothing else on its connection (a mutation round, h31).

The Host tests read one response per connection: a handler that answered 421 and then went on to the
page itself (``parse_request`` returning True after ``send_error``) passed them, though the metrics or
the viewer's status then followed the 421 on the same socket for the rebinding page to read. A
deadline that only shut the server's side for writing passed the trickle test too (the peer saw its
connection end), though the handler kept reading the trickle and held its slot: with every slot so held
the server stayed unreachable, the flood the deadline is for. And ``*.localhost`` means the label, not
any name ending in "localhost". Real servers on loopback, read to the end of the connection.
"""

from __future__ import annotations

import http.server
import socket
import threading
import time

import pytest

from sbd_stream.httpd import BoundedHTTPServer, host_allowed
from sbd_stream.metrics import Metrics

pytestmark = pytest.mark.integration


def _everything(port: int, path: str, host: str) -> bytes:
    """All the bytes the server sends on one connection for ``GET path`` with ``Host: host``."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        got = b""
        while chunk := c.recv(65536):
            got += chunk
        return got


@pytest.mark.timeout(60)
def test_the_metrics_answer_a_foreign_host_with_the_421_alone() -> None:
    m = Metrics()
    port = m.serve(port=0)
    try:
        got = _everything(port, "/metrics", "attacker.example")
        assert got.startswith(b"HTTP/1.") and b" 421 " in got.split(b"\r\n", 1)[0]
        assert got.count(b"HTTP/1.") == 1 and b"sbd_" not in got, got[:400]
        ok = _everything(port, "/metrics", "127.0.0.1")  # the same request for loopback: the metrics
        assert b" 200 " in ok.split(b"\r\n", 1)[0] and b"sbd_frames_received" in ok
    finally:
        m.shutdown()


@pytest.mark.timeout(60)
def test_the_viewer_answers_a_foreign_host_with_the_421_alone(viewer_port: int) -> None:
    for path in ("/api/status", "/"):
        got = _everything(viewer_port, path, "attacker.example:8090")
        assert b" 421 " in got.split(b"\r\n", 1)[0]
        assert got.count(b"HTTP/1.") == 1 and b"series" not in got and b"viewer.js" not in got, got[:400]


def test_only_the_localhost_label_is_loopback() -> None:
    assert host_allowed("127.0.0.1", "viewer.localhost:8090")
    for name in ("notlocalhost", "evil-localhost:8090", "localhost.evil.example"):
        assert not host_allowed("127.0.0.1", name), name


@pytest.mark.timeout(60)
def test_a_trickling_peer_past_its_deadline_gives_its_slot_back() -> None:
    """One slot; a peer trickles a header byte every 0.05 s for as long as the test lasts. Past the 0.5 s
    deadline its handler must end (read and write shut), so another client is answered."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

    srv = BoundedHTTPServer(("127.0.0.1", 0), Handler, max_connections=1, timeout_s=0.5)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    port = srv.server_address[1]
    done = threading.Event()

    def trickle() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.sendall(b"GET / HTTP/1.1\r\nX-Trickle: ")  # one header line that never ends: no
            while not done.wait(0.05):  # header-count limit ends it (100 lines), no read times out
                try:
                    c.sendall(b"a")
                except OSError:
                    return  # the server closed it for reading too: the trickle ends

    peer = threading.Thread(target=trickle, daemon=True)
    peer.start()
    try:
        time.sleep(0.2)  # the trickler holds the one slot
        answered = False
        for _ in range(60):  # up to ~12 s of tries, 24x the deadline, the trickle going on throughout
            time.sleep(0.2)
            try:
                got = _everything(port, "/", "127.0.0.1")
            except OSError:
                continue
            if got.startswith(b"HTTP/1.0 200"):
                answered = True
                break
        assert answered, "the trickling peer kept the only slot past its deadline"
    finally:
        done.set()
        peer.join(5)
        srv.shutdown()
        srv.server_close()
