"""/metrics and the viewer page under idle and excess HTTP connections (real sockets, servers, processes).

An audit held 1,100 idle connections to /metrics: ``ThreadingHTTPServer`` kept each one (a thread and
a descriptor) forever, the service reached its 1024-descriptor limit and the next acquisition's
recording failed (EMFILE). Now a connection has 10 s to send its request, at most 64 are served at
once (more are closed at accept), and ``serve`` raises its soft descriptor limit to the hard one.
"""

from __future__ import annotations

import http.server
import re
import resource
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
import zmq
from conftest import wait_until

from sbd_stream.config import ViewerSettings
from sbd_stream.metrics import Metrics
from sbd_stream.sinks.viewer.server import Viewer

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _idle(port: int, n: int, host: str = "127.0.0.1") -> list[socket.socket]:
    """``n`` connections that start a request and never finish it (no blank line after the headers)."""
    out = []
    for _ in range(n):
        c = socket.create_connection((host, port), timeout=5)
        c.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        out.append(c)
    return out


def _closed_by_server(c: socket.socket, within: float) -> bool:
    """True when the server closed ``c`` (EOF or reset) within ``within`` seconds."""
    c.settimeout(within)
    try:
        return c.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def _close(socks: list[socket.socket]) -> None:
    for c in socks:
        c.close()


def _assert_capped(port: int, path: str) -> None:
    """64 idle connections are held; the next ones are closed at once; a request works once they go."""
    held = _idle(port, 64)
    try:
        extra = _idle(port, 6)
        try:
            assert all(_closed_by_server(c, 3.0) for c in extra)  # before: each held open, a descriptor
        finally:
            _close(extra)
        assert not _closed_by_server(held[0], 0.3)  # the ones within the cap are served as ever
    finally:
        _close(held)
    assert wait_until(lambda: _status(f"http://127.0.0.1:{port}{path}") == 200, timeout=15)


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except OSError:
        return None


@pytest.mark.timeout(60)
def test_metrics_endpoint_closes_connections_over_its_cap_at_once() -> None:
    m = Metrics()
    port = m.serve(port=0)
    try:
        httpd = m._server.httpd  # type: ignore[union-attr]
        assert (httpd.max_connections, httpd.timeout_s) == (64, 10.0)
        _assert_capped(port, "/metrics")
    finally:
        m.shutdown()


@pytest.mark.timeout(60)
def test_viewer_page_closes_connections_over_its_cap_at_once() -> None:
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.bind("tcp://127.0.0.1:*")
    v = Viewer(ViewerSettings(port=0), output_endpoint=pub.getsockopt_string(zmq.LAST_ENDPOINT)).start()
    try:
        port = int(v.url.rstrip("/").rsplit(":", 1)[1])
        _assert_capped(port, "/")
    finally:
        v.close()
        pub.close(0)


@pytest.mark.timeout(60)
def test_an_idle_connection_is_closed_after_the_timeout() -> None:
    """A peer that never finishes its request is dropped after ``timeout_s`` (stdlib: never)."""
    from sbd_stream.httpd import BoundedHTTPServer

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    srv = BoundedHTTPServer(("127.0.0.1", 0), Handler, max_connections=4, timeout_s=0.5)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        (idle,) = _idle(srv.server_address[1], 1)
        assert _closed_by_server(idle, 5.0)
        idle.close()
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.timeout(30)
def test_metrics_bind_an_ipv6_host_and_name_it_in_brackets(caplog: pytest.LogCaptureFixture) -> None:
    """``metrics.host = "::1"`` failed ("Address family for hostname not supported"), and the banner
    printed ``http://:::9105``."""
    from sbd_stream.cli.live import metrics_where
    from sbd_stream.config import load_settings

    try:
        socket.socket(socket.AF_INET6).bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    m = Metrics()
    with caplog.at_level("INFO", logger="sbd_stream.metrics"):
        port = m.serve(host="::1", port=0)
    try:
        assert _status(f"http://[::1]:{port}/metrics") == 200
        assert f"http://[::1]:{port}/metrics" in caplog.text
    finally:
        m.shutdown()
    banner = metrics_where(load_settings(overrides={"metrics": {"host": "::"}}))
    assert banner == "metrics http://[::]:9105/metrics"
    assert (
        metrics_where(load_settings(overrides={"metrics": {"host": ""}}))
        == "metrics http://0.0.0.0:9105/metrics"
    )


def test_an_empty_host_is_named_in_the_exposure_warning(caplog: pytest.LogCaptureFixture) -> None:
    from sbd_stream.security import warn_if_exposed

    with caplog.at_level("WARNING", logger="sbd_stream.security"):
        assert warn_if_exposed("metrics endpoint", "")
    assert 'binds "" (every interface), which' in caplog.text and "binds , which" not in caplog.text


@pytest.mark.timeout(180)
@pytest.mark.parametrize("command", ["serve", "merge"])
def test_services_raise_their_open_file_limit_to_the_hard_one(tiny_engine_dir: Path, command: str) -> None:
    """Started with a soft limit of 256 (systemd's default is 1024), ``serve`` and ``merge`` (one socket
    per input and subscriber) run with the hard one."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"hard open-file limit {hard}: nothing to raise to")
    want = 65536 if hard == resource.RLIM_INFINITY else hard
    cmd = [
        sys.executable, "-m", "sbd_stream", "serve", "--input", "tcp://127.0.0.1:1",
        "--output", "tcp://127.0.0.1:*", "--no-record", "--model", str(tiny_engine_dir),
        "--engine", "onnxruntime", "--metrics-port", "0",
    ]  # fmt: skip
    started = "metrics on http"
    if command == "merge":
        cmd = [sys.executable, "-m", "sbd_stream", "merge", "--input", "tcp://127.0.0.1:1",
               "--output", "tcp://127.0.0.1:0"]  # fmt: skip
        started = "merging 1 inputs"

    def low() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, preexec_fn=low)
    try:
        lines: list[str] = []
        assert proc.stderr is not None
        for ln in proc.stderr:
            lines.append(ln)
            if started in ln:
                break
        assert any(started in ln for ln in lines), "".join(lines)
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        got = re.search(r"^Max open files\s+(\d+)", limits, re.M)
        assert got and int(got.group(1)) == want, limits
    finally:
        proc.terminate()
        proc.wait(60)


def test_the_systemd_unit_sets_a_descriptor_limit() -> None:
    limit = re.search(r"^LimitNOFILE=(\d+)$", (DEPLOY / "sbd-stream.service").read_text(), re.M)
    assert limit is not None and int(limit.group(1)) >= 65536
