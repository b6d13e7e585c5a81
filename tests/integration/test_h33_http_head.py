"""/metrics, /healthz and the viewer answer HEAD as GET without a body (audit h33).

Uptime monitors (``wget --spider``, ``curl -I``, load-balancer checks) ask with HEAD; http.server's
default answer is 501, which they read as "down". One kept-alive connection asks HEAD then GET: the
handler is reused across its requests, so the HEAD must not leave the next GET without its body.
Real servers on loopback.
"""

from __future__ import annotations

import http.client

import pytest

from sbd_stream.metrics import Metrics

pytestmark = pytest.mark.integration


def _head_then_get(port: int, path: str) -> tuple[tuple[int, str | None, bytes], tuple[int, bytes]]:
    """(status, Content-Length, body) of HEAD, then (status, body) of GET, on one HTTP/1.1 connection."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("HEAD", path)
        r = c.getresponse()
        head = (r.status, r.getheader("Content-Length"), r.read())
        c.request("GET", path)
        g = c.getresponse()
        return head, (g.status, g.read())
    finally:
        c.close()


@pytest.mark.timeout(60)
def test_metrics_and_health_answer_head_like_get() -> None:
    m = Metrics()
    port = m.serve(port=0)
    try:
        for path, marker in (("/metrics", b"sbd_frames_received"), ("/healthz", b'"ok"')):
            (hs, hlen, hbody), (gs, gbody) = _head_then_get(port, path)
            assert hs == gs == 200, (path, hs, gs)
            assert hbody == b"" and hlen is not None and int(hlen) > 0, (path, hlen, hbody)
            assert marker in gbody, path
        (hs, _, hbody), _ = _head_then_get(port, "/nowhere")
        assert hs == 404 and hbody == b""
    finally:
        m.shutdown()


@pytest.mark.timeout(60)
def test_viewer_answers_head_like_get(viewer_port: int) -> None:
    for path, marker in (("/api/status", b"{"), ("/", b"<")):
        (hs, hlen, hbody), (gs, gbody) = _head_then_get(viewer_port, path)
        assert hs == gs == 200, (path, hs, gs)
        assert hbody == b"" and int(hlen or 0) == len(gbody), (path, hlen, len(gbody))
        assert gbody.lstrip().startswith(marker), path
