"""The HTTP endpoint of the service's metrics: ``/metrics`` (Prometheus text) and ``/healthz`` (JSON).

Apart from ``metrics.py`` (the registry) because the server is I/O with a life of its own (bound,
run supervised, closed) while the registry is plain counters that every stage imports; ``merge`` runs
the server over its own registry.
"""

from __future__ import annotations

import http.server
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from sbd_stream.httpd import BoundedHTTPServer, LoopbackHostHandler

_log = logging.getLogger("sbd_stream.metrics")


class MetricsServer:
    """``/metrics`` (Prometheus text format) and ``/healthz`` (JSON; 200 when ok, 503 otherwise).

    ``run`` is the server loop, meant to run supervised; ``close`` stops it (it is safe to call
    whether or not the loop ever ran).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str,
        port: int,
        health: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        from sbd_stream.security import warn_if_exposed

        warn_if_exposed("metrics endpoint", host)
        self.httpd = BoundedHTTPServer((host, port), _handler(registry, health))  # 10 s, 64 at once
        self.port = int(self.httpd.server_address[1])
        self._running = threading.Event()
        self._closed = False
        self._lock = threading.Lock()  # a close between run's check and its loop: the loop never starts

    def run(self) -> None:
        """The server loop; returns at once after ``close`` (a service stopped before its metrics thread
        first ran had the loop start on the closed socket: an error, restarted, after the stop)."""
        with self._lock:
            if self._closed:
                return
            self._running.set()
        self.httpd.serve_forever(poll_interval=0.2)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            running = self._running.is_set()
        if running:
            self.httpd.shutdown()  # waits for serve_forever to return: only if it ever ran
        self.httpd.server_close()


def _handler(
    registry: CollectorRegistry, health: Callable[[], dict[str, Any]] | None
) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(LoopbackHostHandler):  # a Host other than loopback: 421 (DNS rebinding)
        server_version = "sbd-metrics"

        def log_message(self, format: str, *args: Any) -> None:
            _log.debug("metrics http: " + format, *args)

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.send_body(body)

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            try:
                if path in ("/metrics", "/"):
                    self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    body = health() if health is not None else {"ok": True, "stages": {}}
                    code = 200 if body.get("ok") else 503
                    self._send(code, json.dumps(body, default=str).encode(), "application/json")
                else:
                    self._send(404, b"not found", "text/plain")
            except (BrokenPipeError, ConnectionResetError):
                pass

    return Handler
