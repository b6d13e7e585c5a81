"""Live viewer: a local web page with the newest raw, denoised and likelihood frames and key metrics.

Microscopists look rather than read logs. The viewer is a *consumer* of the service, never a stage of
it: denoised and LLR frames come from a SUB on the service's own PUB output, raw frames from a
non-blocking in-process tap (or a SUB on the detector's PUB for a stand-alone viewer), metrics from the
service's Prometheus endpoint. SUB sockets have a tiny receive HWM and are drained a few times a second
keeping only the newest message, so a slow browser just sees fewer frames; PUB never waits for us.
Images are rendered on request in the HTTP threads, binned to display size.

Security: binds 127.0.0.1 by default (anything else is warned about), serves GET only, no file system
paths from requests. The subscriber thread runs under the service's supervisor (stage ``viewer``): a
message it cannot show is counted and skipped, and the thread is restarted if it dies.
"""

from __future__ import annotations

import collections
import http.server
import importlib.resources
import json
import logging
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from sbd_stream.config import ViewerSettings
from sbd_stream.protocol import FrameHeader, FrameMessage, ProtocolError, SeriesMessage, decode
from sbd_stream.security import CurveSettings, apply_curve, warn_if_exposed
from sbd_stream.sinks.viewer.metrics_poll import MetricsPoller
from sbd_stream.sinks.viewer.render import check_percentiles, render
from sbd_stream.supervisor import Supervisor

log = logging.getLogger(__name__)

KINDS = ("raw", "denoised", "llr")
_TOPIC_KIND = {b"frame": "raw", b"denoised": "denoised", b"llr": "llr"}


@dataclass
class Shown:
    header: FrameHeader
    data: np.ndarray
    t: float  # time.time() at receipt


def local_endpoint(endpoint: str) -> str:
    """Where a local client connects to reach a socket bound on ``endpoint`` (0.0.0.0 / * -> loopback)."""
    for wild in ("//0.0.0.0:", "//*:", "//[::]:"):
        endpoint = endpoint.replace(wild, "//127.0.0.1:")
    return endpoint


class FrameStore:
    """Newest frame per kind plus rings of recent frames, bounded in bytes and in count.

    The denoised frame of a given seq arrives a latency later than its raw frame; keeping the raw
    frames of that interval lets the page show all three panels for the same frame. The rings hold
    references to received buffers, no copies. ``offer`` is O(1) amortised.
    """

    MAX_RING = 512

    def __init__(self, raw_ring_bytes: float = 256e6, output_ring_bytes: float = 64e6) -> None:
        self._lock = threading.Lock()
        self._newest: dict[str, Shown] = {}
        self._rings: dict[str, collections.deque[Shown]] = {k: collections.deque() for k in KINDS}
        self._ring_bytes = dict.fromkeys(KINDS, 0)
        self._limit = {"raw": raw_ring_bytes, "denoised": output_ring_bytes, "llr": output_ring_bytes}
        self._times: dict[str, collections.deque[float]] = {k: collections.deque(maxlen=32) for k in KINDS}
        self.received = dict.fromkeys(KINDS, 0)
        self.series: dict[str, Any] = {}

    def offer(self, kind: str, header: FrameHeader, data: np.ndarray) -> None:
        s = Shown(header, data, time.time())
        with self._lock:
            self._newest[kind] = s
            self.received[kind] += 1
            self._times[kind].append(s.t)
            ring = self._rings[kind]
            ring.append(s)
            self._ring_bytes[kind] += data.nbytes
            while len(ring) > 1 and (self._ring_bytes[kind] > self._limit[kind] or len(ring) > self.MAX_RING):
                self._ring_bytes[kind] -= ring.popleft().data.nbytes

    def newest(self, kind: str) -> Shown | None:
        with self._lock:
            return self._newest.get(kind)

    def frame_for(self, kind: str, acq: str, seq: int) -> Shown | None:
        """Frame ``(acq, seq)`` of ``kind`` if still kept, else the newest of that kind."""
        with self._lock:
            for s in reversed(self._rings[kind]):
                if s.header.seq == seq and s.header.acq == acq:
                    return s
            return self._newest.get(kind)

    def rate(self, kind: str) -> float:
        with self._lock:
            t = list(self._times[kind])
        if len(t) < 2 or time.time() - t[-1] > 2.0:
            return 0.0
        return (len(t) - 1) / max(t[-1] - t[0], 1e-9)


class Viewer:
    """Subscribes, keeps the newest frames, serves the page. ``offer_raw`` is the in-process tap."""

    def __init__(
        self,
        settings: ViewerSettings,
        output_endpoint: str | None = None,
        raw_endpoint: str | None = None,
        metrics_url: str | None = None,
        curve: CurveSettings | None = None,
        context: zmq.Context | None = None,
        supervisor: Supervisor | None = None,
    ) -> None:
        """``output_endpoint``: the service's PUB (denoised, llr, series); ``raw_endpoint``: a detector PUB,
        for a stand-alone viewer (in a service, raw frames come from ``offer_raw``); ``metrics_url``: the
        service's /metrics; ``curve``: client keys for a CURVE-protected output."""
        self.cfg = cfg = settings
        self.output_endpoint, self.raw_endpoint, self.metrics_url = output_endpoint, raw_endpoint, metrics_url
        self.curve = curve if curve is not None and curve.enabled else None
        self.ctx = context or zmq.Context.instance()
        self.supervisor = supervisor or Supervisor()  # the service's, when attached to one
        self.store = FrameStore(cfg.raw_ring_mb * 1e6, cfg.output_ring_mb * 1e6)
        self.metrics = MetricsPoller(metrics_url) if metrics_url else None
        self._stop = threading.Event()
        self._socks: list[zmq.Socket] = []
        self._sub_thread: threading.Thread | None = None
        self._httpd: http.server.ThreadingHTTPServer | None = None
        self._cache: collections.OrderedDict[tuple, bytes] = collections.OrderedDict()
        self._cache_lock = threading.Lock()
        self.url = ""

    # --- sources -----------------------------------------------------------------------------------
    def offer_raw(self, frame: Any) -> None:
        """Pipeline tap: called on the ingest thread for every raw frame; O(1), never blocks."""
        self.store.offer("raw", frame.header, frame.data)

    def _subscribe(self, endpoint: str, topics: tuple[bytes, ...], curve: CurveSettings | None) -> None:
        sock = self.ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, 4)  # if this thread falls behind, frames drop at our end only
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, 512 * 1024 * 1024)
        if curve is not None:
            apply_curve(sock, curve, binds=False, domain="sbd-viewer")
        for t in topics:
            sock.setsockopt(zmq.SUBSCRIBE, t)
        sock.connect(local_endpoint(endpoint))
        self._socks.append(sock)

    def _run_subscriber(self) -> None:
        """Receive everything as it arrives; the store keeps only the newest (plus the raw ring).

        Reading slower than the publisher would not slow it (PUB drops for us at our HWM) but would
        show ever older frames: ZeroMQ queues are FIFO and CONFLATE cannot take multipart messages.
        Receiving is zero-copy and decoding is a header parse, so keeping up is cheap.
        """
        poller = zmq.Poller()
        for s in self._socks:
            poller.register(s, zmq.POLLIN)
        while not self._stop.is_set():
            for sock, _ev in poller.poll(50):
                for _ in range(4096):
                    try:
                        parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self.supervisor.call("viewer", self._accept, parts, logger=log)

    def _close_sockets(self) -> None:
        for s in self._socks:
            s.close(linger=0)

    def _accept(self, parts: list) -> None:
        try:
            msg = decode(parts, max_payload=512 * 1024 * 1024)
        except ProtocolError as exc:
            log.debug("viewer ignored a malformed message: %s", exc)
            return
        if isinstance(msg, SeriesMessage):
            if msg.topic == b"series_start":
                self.store.series = {"acq": msg.header.acq, "meta": msg.header.meta}
            return
        assert isinstance(msg, FrameMessage)
        self.store.offer(_TOPIC_KIND[msg.topic], msg.header, msg.data)

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> Viewer:
        c = self.cfg
        if self.output_endpoint:
            self._subscribe(self.output_endpoint, (b"denoised", b"llr", b"series_start"), self.curve)
        if self.raw_endpoint:
            self._subscribe(self.raw_endpoint, (b"frame", b"series_start"), None)
        self._sub_thread = self.supervisor.spawn(
            "viewer", self._run_subscriber, self._close_sockets, name="sbd-viewer-sub"
        )
        if self.metrics is not None:
            self.metrics.start()
        warn_if_exposed("viewer page", c.host)
        self._httpd = http.server.ThreadingHTTPServer((c.host, c.port), _make_handler(self))
        self._httpd.daemon_threads = True
        host, port = self._httpd.server_address[:2]
        self.url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}/"
        threading.Thread(target=self._httpd.serve_forever, name="sbd-viewer-http", daemon=True).start()
        log.info("live viewer on %s", self.url)
        return self

    def close(self) -> None:
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._sub_thread is not None:
            self._sub_thread.join(3.0)
        if self.metrics is not None:
            self.metrics.stop()

    # --- what the page asks for --------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        now = time.time()
        frames: dict[str, Any] = {}
        for k in KINDS:
            s = self.store.newest(k)
            frames[k] = None
            if s is not None:
                h = s.header
                frames[k] = {
                    "acq": h.acq,
                    "seq": h.seq,
                    "shape": list(h.shape),
                    "dtype": h.dtype,
                    "engine": h.engine,
                    "age_s": round(now - s.t, 3),
                    "latency_s": round(s.t - h.ts, 4),  # sender timestamp -> our receipt
                    "received": self.store.received[k],
                    "rate_hz": round(self.store.rate(k), 2),
                }
        return {
            "series": self.store.series,
            "frames": frames,
            "metrics": self.metrics.summary if self.metrics else None,
            "metrics_error": self.metrics.error if self.metrics else "no metrics endpoint configured",
        }

    def image(self, kind: str, lo: float, hi: float, seq: int | None) -> tuple[bytes, Shown] | None:
        if seq is not None:  # the frame shown in another panel, so all three show the same one
            den = self.store.newest("denoised")
            s = self.store.frame_for(kind, den.header.acq if den else "", seq)
        else:
            s = self.store.newest(kind)
        if s is None:
            return None
        key = (kind, s.header.acq, s.header.seq, lo, hi)
        with self._cache_lock:
            png = self._cache.get(key)
        if png is None:
            png = render(s.data, kind, lo, hi, self.cfg.max_side)
            with self._cache_lock:
                self._cache[key] = png
                while len(self._cache) > 12:
                    self._cache.popitem(last=False)
        return png, s


def _make_handler(viewer: Viewer) -> type[http.server.BaseHTTPRequestHandler]:
    page = importlib.resources.files("sbd_stream").joinpath("sinks/viewer/static/index.html").read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "sbd-viewer"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("viewer http: " + format, *args)

        def _send(self, code: int, body: bytes, ctype: str, extra: dict[str, str] | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            q = urllib.parse.parse_qs(url.query)
            try:
                if url.path in ("/", "/index.html"):
                    self._send(200, page, "text/html; charset=utf-8")
                elif url.path == "/api/status":
                    self._send(200, json.dumps(viewer.status()).encode(), "application/json")
                elif url.path.startswith("/image/") and url.path.endswith(".png"):
                    kind = url.path[len("/image/") : -len(".png")]
                    if kind not in KINDS:
                        self._send(404, b"unknown image", "text/plain")
                        return
                    lo, hi = check_percentiles(float(q.get("lo", ["1"])[0]), float(q.get("hi", ["99"])[0]))
                    seq = int(q["seq"][0]) if "seq" in q else None
                    got = viewer.image(kind, lo, hi, seq)
                    if got is None:
                        self._send(404, b"no frame yet", "text/plain")
                        return
                    png, s = got
                    hdr = {"X-Seq": str(s.header.seq), "X-Acq": urllib.parse.quote(s.header.acq)}
                    self._send(200, png, "image/png", hdr)
                else:
                    self._send(404, b"not found", "text/plain")
            except ValueError as exc:
                self._send(400, str(exc).encode()[:200], "text/plain")
            except (BrokenPipeError, ConnectionResetError):
                pass

    return Handler
