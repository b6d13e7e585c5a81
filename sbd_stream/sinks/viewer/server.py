"""Live viewer: a local web page with the newest raw, denoised and likelihood frames and key metrics.

Microscopists look rather than read logs. The viewer is a *consumer* of the service, never a stage of
it: denoised and LLR frames come from a SUB on the service's own PUB output, raw frames from a
non-blocking in-process tap (or a SUB on the detector's PUB for a stand-alone viewer), metrics from the
service's Prometheus endpoint. SUB sockets have a tiny receive HWM and are drained a few times a second
keeping only the newest message, so a slow browser just sees fewer frames; PUB never waits for us.
Images are rendered on request in the HTTP threads, binned to display size.

Security: binds 127.0.0.1 by default (anything else is warned about), serves GET only, no file system
paths from requests; on loopback it answers only a ``Host`` naming loopback (sbd_stream/httpd.py: a
page that re-points its own name at 127.0.0.1 would otherwise read the frames). The subscriber
thread runs under the service's supervisor (stage ``viewer``): a message it cannot show is counted
and skipped, and the thread is restarted if it dies.
"""

from __future__ import annotations

import http.server
import importlib.resources
import json
import logging
import threading
import time
import urllib.parse
from typing import Any

import numpy as np
import zmq

from sbd_stream.config import DetectorSettings, ViewerSettings
from sbd_stream.frames import MAX_OUTPUT_BYTES
from sbd_stream.httpd import BoundedHTTPServer, LoopbackHostHandler, local_url
from sbd_stream.protocol import FrameMessage, ProtocolError, SeriesMessage, decode, ipv6_endpoint
from sbd_stream.security import CurveSettings, apply_curve, warn_if_exposed
from sbd_stream.sinks.viewer import frameinfo
from sbd_stream.sinks.viewer.images import Images
from sbd_stream.sinks.viewer.metrics_poll import MetricsPoller
from sbd_stream.sinks.viewer.query import ImageQuery, parse_image_query
from sbd_stream.sinks.viewer.store import KINDS, FrameStore, Shown
from sbd_stream.supervisor import Supervisor

log = logging.getLogger(__name__)

__all__ = ["KINDS", "FrameStore", "Shown", "Viewer", "local_endpoint"]
_TOPIC_KIND = {b"frame": "raw", b"denoised": "denoised", b"llr": "llr"}
PUBLISHED_LANE = "live"
"""The lane of every output on a service's PUB when its header names none: the service publishes its
live lane only (completed frames go to the recording, ``service/sink.py`` ``PublisherSink``), and with
one lane (``lanes.live = false``) its results carry the same name, as ``sbd_lane_latency_seconds``."""


class NotHeld(LookupError):
    """A ``seq`` asked for that the viewer no longer (or never) kept: HTTP 404 with the range it holds."""


def local_endpoint(endpoint: str) -> str:
    """Where a local client connects to reach a socket bound on ``endpoint`` (0.0.0.0 / * -> loopback)."""
    for wild in ("//0.0.0.0:", "//*:", "//[::]:"):
        endpoint = endpoint.replace(wild, "//127.0.0.1:")
    return endpoint


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
        detector: DetectorSettings | None = None,
    ) -> None:
        """``output_endpoint``: the service's PUB (denoised, llr, series); ``raw_endpoint``: a detector PUB,
        for a stand-alone viewer (in a service, raw frames come from ``offer_raw``); ``metrics_url``: the
        service's /metrics; ``curve``: client keys for a CURVE-protected output; ``detector``: the
        service's detector settings, the last resort for pixel size and dose when no message states them
        (sbd_stream/sinks/viewer/frameinfo.py)."""
        self.cfg = cfg = settings
        self.output_endpoint, self.raw_endpoint, self.metrics_url = output_endpoint, raw_endpoint, metrics_url
        self.curve = curve if curve is not None and curve.enabled else None
        self.ctx = context or zmq.Context.instance()
        self.supervisor = supervisor or Supervisor()  # the service's, when attached to one
        self.store = FrameStore(cfg.raw_ring_mb * 1e6, cfg.output_ring_mb * 1e6)
        self.detector = detector
        self.images = Images(cfg.max_side, self.pixel_of)
        self.metrics = MetricsPoller(metrics_url) if metrics_url else None
        self._stop = threading.Event()
        self._socks: list[zmq.Socket] = []
        # the kinds a series_start on each socket is ordered with (FrameStore.series_start)
        self._series_kinds: dict[zmq.Socket, tuple[str, ...]] = {}
        self._sub_thread: threading.Thread | None = None
        self._httpd: BoundedHTTPServer | None = None
        self._counts: tuple[tuple[str, int], float] | None = None
        self.url = ""

    # --- sources -----------------------------------------------------------------------------------
    def offer_raw(self, frame: Any) -> None:
        """Pipeline tap: called on the ingest thread for every raw frame; O(1), never blocks.

        The service's verdict that a frame restarts its acquisition's numbering (``Frame.seq_restart``)
        starts a new series here too, as does a ``series_start`` the service passes on
        (``raw_series_start``); otherwise a new series is told by its numbers and ``ts`` (FrameStore)."""
        self.store.offer("raw", frame.header, frame.data, restart=bool(getattr(frame, "seq_restart", False)))

    def raw_series_start(self, acq: str, ts: float, meta: dict[str, Any]) -> None:
        """Pipeline tap: a ``series_start`` received on the ingest thread, in its place among the raw
        frames (``service/sink.py``): the next raw frame of ``acq`` starts a new series."""
        self.store.series_start(acq, ts, meta, ("raw",))

    def _subscribe(
        self,
        endpoint: str,
        topics: tuple[bytes, ...],
        curve: CurveSettings | None,
        series_kinds: tuple[str, ...],
    ) -> None:
        sock = self.ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, 4)  # if this thread falls behind, frames drop at our end only
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_OUTPUT_BYTES)  # what the publisher may send (was 512 MiB)
        if curve is not None:
            apply_curve(sock, curve, binds=False, domain="sbd-viewer")
        for t in topics:
            sock.setsockopt(zmq.SUBSCRIBE, t)
        target = local_endpoint(endpoint)
        sock.setsockopt(zmq.IPV6, ipv6_endpoint(target))  # serve --output tcp://[::1]:P: a literal needs it
        sock.connect(target)
        self._socks.append(sock)
        self._series_kinds[sock] = series_kinds

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
                    self.supervisor.call("viewer", self._accept, parts, self._series_kinds[sock], logger=log)

    def _close_sockets(self) -> None:
        for s in self._socks:
            s.close(linger=0)

    def _accept(self, parts: list, series_kinds: tuple[str, ...] = ("denoised", "llr")) -> None:
        """One received message; ``series_kinds``: the kinds its socket carries, which a
        ``series_start`` on it starts a new series of."""
        try:
            msg = decode(parts, max_payload=MAX_OUTPUT_BYTES)  # outputs over 11585^2 were refused
        except ProtocolError as exc:
            log.debug("viewer ignored a malformed message: %s", exc)
            return
        if isinstance(msg, SeriesMessage):
            if msg.topic == b"series_start":
                h = msg.header
                self.store.series_start(h.acq, h.ts, h.meta, series_kinds)
            return
        assert isinstance(msg, FrameMessage)
        kind = _TOPIC_KIND[msg.topic]
        self.store.offer(kind, msg.header, msg.data, None if kind == "raw" else PUBLISHED_LANE)

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> Viewer:
        c = self.cfg
        if self.output_endpoint:
            topics = (b"denoised", b"llr", b"series_start")
            self._subscribe(self.output_endpoint, topics, self.curve, ("denoised", "llr"))
        if self.raw_endpoint:
            self._subscribe(self.raw_endpoint, (b"frame", b"series_start"), None, ("raw",))
        self._sub_thread = self.supervisor.spawn(
            "viewer", self._run_subscriber, self._close_sockets, name="sbd-viewer-sub"
        )
        if self.metrics is not None:
            self.metrics.start()
        warn_if_exposed("viewer page", c.host)
        # a timeout per connection and at most 64 at once: idle peers cannot take the service's descriptors
        self._httpd = BoundedHTTPServer((c.host, c.port), _make_handler(self))
        self.url = local_url(c.host, int(self._httpd.server_address[1])) + "/"
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
    def _raw_header(self, acq: str) -> Any:
        raw = self.store.newest("raw")
        return raw.header if raw is not None and raw.header.acq == acq else None

    def pixel_of(self, s: Shown) -> float | None:
        """Pixel size (A) of a kept frame, from the messages (frameinfo.frame_pixel)."""
        meta = self.store.series.get("meta", {}) if self.store.series.get("acq") == s.header.acq else {}
        return frameinfo.frame_pixel(s.header, self._raw_header(s.header.acq), meta, self.detector)[0]

    def _mean_counts(self, s: Shown) -> float:
        """Mean counts per pixel of a raw frame on a strided subsample (cheap at K2 size), once per frame."""
        key = (s.header.acq, s.header.seq)
        if self._counts is None or self._counts[0] != key:
            step = max(1, max(s.data.shape) // 256)
            self._counts = (key, float(np.asarray(s.data[::step, ::step], np.float64).mean()))
        return self._counts[1]

    def status(self) -> dict[str, Any]:
        now = time.time()
        series = self.store.series
        frames: dict[str, Any] = {}
        for k in KINDS:
            s = self.store.newest(k)
            frames[k] = None
            if s is None:
                continue
            h = s.header
            meta = series.get("meta", {}) if series.get("acq") == h.acq else {}
            raw_h = self._raw_header(h.acq)
            px, px_src = frameinfo.frame_pixel(h, raw_h, meta, self.detector)
            frames[k] = {
                "acq": h.acq,
                "seq": h.seq,
                "shape": list(h.shape),
                "dtype": h.dtype,
                "engine": h.engine,
                "lane": s.lane,
                "age_s": round(now - s.t, 3),
                **frameinfo.freshness(now - s.t, h.exposure_s, self.store.interval(k)),
                "blank": frameinfo.is_blank(h),
                "latency_s": round(s.latency_s, 4),  # sender timestamp -> our receipt
                "received": self.store.received[k],
                "rate_hz": round(self.store.rate(k), 2),
                "pixel_size_A": px,
                "pixel_source": px_src,
                "time": frameinfo.frame_time(h, {"acq": h.acq, "ts": self.store.series_t0(h.acq, h.ts)}),
            }
            if k == "raw":
                det_px = frameinfo.detector_pixel(h, meta, self.detector)[0]
                frames[k]["dose"] = {
                    **frameinfo.dose(h, meta, self.detector, det_px),
                    "mean_counts_per_px": self._mean_counts(s),
                }
        return {
            "series": series,
            "frames": frames,
            "latency": self.store.latency(),
            "metrics": self.metrics.summary if self.metrics else None,
            "metrics_error": self.metrics.error if self.metrics else "no metrics endpoint configured",
        }

    def image(self, query: ImageQuery) -> tuple[bytes, Shown, dict[str, Any]] | None:
        """PNG of the frame asked for; None before the first frame; NotHeld for a ``seq`` not kept."""
        req, seq = query.request, query.seq
        den = self.store.newest("denoised")
        newest = self.store.newest(req.kind)
        s = newest
        if seq is not None and newest is not None:  # the frame shown in another panel, so all show one
            acq = (den or newest).header.acq
            s = self.store.frame_for(req.kind, acq, seq)
            if s is None and not query.fallback_newest:
                held = self.store.held(req.kind, acq)
                kept = f"{held[0]}-{held[1]}" if held else "none"
                raise NotHeld(f"{req.kind} frame {seq} of {acq} is not held (held: {kept})")
            s = s or newest
        if s is None:
            return None
        if den is not None and (req.kind != "denoised" or seq is not None):
            # the mask of its own denoised frame if still kept, else of the newest (nearly the same)
            den = self.store.frame_for("denoised", s.header.acq, s.header.seq) or den
        if req.kind == "denoised":
            den = s
        png, info = self.images.render(s, req, den)
        return png, s, info


def _make_handler(viewer: Viewer) -> type[http.server.BaseHTTPRequestHandler]:
    static = importlib.resources.files("sbd_stream").joinpath("sinks/viewer/static")
    page = static.joinpath("index.html").read_bytes()
    script = static.joinpath("viewer.js").read_bytes()

    class Handler(LoopbackHostHandler):  # a Host other than loopback: 421 (DNS rebinding)
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
            self.send_body(body)

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            q = urllib.parse.parse_qs(url.query)
            try:
                if url.path in ("/", "/index.html"):
                    self._send(200, page, "text/html; charset=utf-8")
                elif url.path == "/viewer.js":
                    self._send(200, script, "text/javascript; charset=utf-8")
                elif url.path == "/api/status":
                    self._send(200, json.dumps(viewer.status()).encode(), "application/json")
                elif url.path.startswith("/image/") and url.path.endswith(".png"):
                    kind = url.path[len("/image/") : -len(".png")]
                    if kind not in KINDS:
                        self._send(404, b"unknown image", "text/plain")
                        return
                    got = viewer.image(parse_image_query(kind, q))
                    if got is None:
                        self._send(404, b"no frame yet", "text/plain")
                        return
                    png, s, info = got
                    hdr = {
                        "X-Seq": str(s.header.seq),
                        "X-Acq": urllib.parse.quote(s.header.acq),
                        "X-Shape": f"{s.header.shape[0]},{s.header.shape[1]}",
                        "X-Region": ",".join(str(v) for v in info["region"]),
                        "X-Bin": str(info["bin"]),
                        "X-Ts": f"{s.header.ts:.6f}",
                        "X-Latency": f"{s.latency_s:.6f}",
                        "X-Age": f"{time.time() - s.t:.6f}",  # since the viewer received it: stale or not
                    }
                    if frameinfo.is_blank(s.header):
                        hdr["X-Blank"] = "1"
                    if s.lane is not None:
                        hdr["X-Lane"] = urllib.parse.quote(s.lane)
                    if "window" in info:
                        hdr["X-Window"] = ",".join(f"{v:.6g}" for v in info["window"])
                    if "llr_limit" in info:
                        hdr["X-Llr-Limit"] = f"{info['llr_limit']:.6g}"
                    px = viewer.pixel_of(s)
                    if px is not None:
                        hdr["X-Pixel-Size-A"] = f"{px:.6g}"
                    self._send(200, png, "image/png", hdr)
                else:
                    self._send(404, b"not found", "text/plain")
            except NotHeld as exc:
                self._send(404, str(exc).encode()[:200], "text/plain; charset=utf-8")
            except ValueError as exc:
                self._send(400, str(exc).encode()[:200], "text/plain; charset=utf-8")
            except (BrokenPipeError, ConnectionResetError):
                pass

    return Handler
