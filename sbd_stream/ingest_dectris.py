"""Ingest of DECTRIS detectors: a PULL (or SUB) socket, the stream v1 / v2 decoders, a series state machine.

DECTRIS DCUs bind a PUSH socket and send each message to exactly one connected PULL; a fan-out proxy
may republish on PUB, hence SUB as well. The state machine exists because real series misbehave:
the receiver may join mid-series (the header went to nobody), a series end may never come (the
inactivity timeout closes it), a restarted DCU re-sends series ids, and messages of an earlier
series may still be queued when a new one starts (they are drained, counted as stale, never mixed
into the new recording). Reconnection is ZeroMQ's: a connected socket re-dials the sender's port
until it comes back; ZMTP heartbeats notice a peer that vanished without closing.

It hands the pipeline the same ``Frame`` / ``SeriesMessage`` objects as the wire-format ingest.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq
from prometheus_client import Counter

from sbd_stream.dectris import DectrisFrameMessage, StreamV1Decoder, decode_stream_v2
from sbd_stream.ingest import (
    Frame,
    FrameHandler,
    SequenceTracker,
    SeriesHandler,
    count_sequence_event,
)
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import (
    TOPIC_SERIES_END,
    TOPIC_SERIES_START,
    FrameMessage,
    Message,
    ProtocolError,
    SeriesHeader,
    SeriesMessage,
)
from sbd_stream.worker import BackgroundWorker

log = logging.getLogger(__name__)

DIALECTS = ("dectris-stream-v1", "dectris-stream-v2")


@dataclass
class DectrisFrame(Frame):
    """A ``Frame`` that also carries the detector's bitshuffle-LZ4 chunk, for ``write_direct_chunk``."""

    chunk: bytes | None = None
    series: int = 0


@dataclass
class DectrisIngestSettings:
    """What this ingest needs; ``from_ingest`` maps the service's IngestSettings onto it."""

    endpoint: str = "tcp://127.0.0.1:9999"
    dialect: str = "dectris-stream-v1"
    socket: str = "pull"  # pull | sub
    bind: bool = False
    rcvhwm: int = 64
    max_payload_bytes: int = 3838 * 3710 * 4
    series_timeout_s: float = 10.0
    heartbeat_s: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_ingest(cls, s: Any) -> DectrisIngestSettings:
        """From ``sbd_stream.config.IngestSettings`` (fields it lacks keep their defaults here)."""
        mode = getattr(s, "mode", "connect")
        return cls(
            endpoint=s.endpoint,
            dialect=str(getattr(getattr(s, "dialect", None), "value", getattr(s, "dialect", cls.dialect))),
            socket=str(getattr(getattr(s, "socket_type", None), "value", getattr(s, "socket_type", "pull"))),
            bind=str(getattr(mode, "value", mode)) == "bind",
            rcvhwm=s.rcvhwm,
            max_payload_bytes=s.max_payload_bytes,
            series_timeout_s=float(getattr(s, "series_timeout_s", cls.series_timeout_s)),
        )


class DectrisMetrics:
    """Counters only this ingest has, registered once on the service's own registry."""

    def __init__(self, metrics: Metrics) -> None:
        r = metrics.registry
        self.stale = Counter(
            "sbd_dectris_stale_messages", "Messages of an earlier series, drained", registry=r
        )
        self.timeouts = Counter(
            "sbd_dectris_series_timeouts",
            "Series closed by the inactivity timeout (no series end)",
            registry=r,
        )
        self.joined = Counter(
            "sbd_dectris_series_joined", "Series joined mid-way (their start was never received)", registry=r
        )
        self.superseded = Counter(
            "sbd_dectris_series_superseded", "Series closed because a new one started first", registry=r
        )

    @classmethod
    def of(cls, metrics: Metrics) -> DectrisMetrics:
        dm = metrics.__dict__.get("_dectris_metrics")
        if dm is None:
            dm = metrics.__dict__["_dectris_metrics"] = cls(metrics)
        return dm


class SeriesState:
    """The open series (if any) and the recently closed ones whose late messages are stale."""

    def __init__(self, remember: int = 64) -> None:
        self.acq: str | None = None
        self.series: int | None = None
        self.expected: int | None = None
        self.received = 0
        self.tracker = SequenceTracker()
        self.closed: collections.deque[str] = collections.deque(maxlen=remember)
        self.last_activity = time.monotonic()

    def open(self, acq: str, series: int | None, expected: int | None) -> None:
        self.acq, self.series, self.expected, self.received = acq, series, expected, 0
        self.tracker.reset(acq)
        if acq in self.closed:  # a restarted sender may reuse the id: a new start makes it current
            self.closed.remove(acq)

    def close(self) -> None:
        if self.acq is not None:
            self.closed.append(self.acq)
        self.acq = self.series = self.expected = None


class DectrisIngest(BackgroundWorker):
    """Receive thread for the DECTRIS dialects; handlers must not block; bad input never stops it."""

    thread_name = "sbd-ingest-dectris"

    def __init__(
        self,
        settings: DectrisIngestSettings,
        metrics: Metrics,
        on_frame: FrameHandler,
        on_series: SeriesHandler | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        if settings.dialect not in DIALECTS:
            raise ValueError(f"unknown dialect {settings.dialect!r}; expected one of {DIALECTS}")
        self.settings, self.metrics = settings, metrics
        self.dm = DectrisMetrics.of(metrics)
        self.on_frame, self.on_series = on_frame, on_series
        self.ctx = context or zmq.Context.instance()
        self.v1 = StreamV1Decoder(settings.max_payload_bytes)
        self.state = SeriesState()
        self._decode: Callable[[list[Any]], list[Message]] = (
            self.v1.decode
            if settings.dialect == "dectris-stream-v1"
            else lambda parts: decode_stream_v2(parts, settings.max_payload_bytes)
        )
        self._init_worker()
        self.sock = self.ctx.socket(zmq.SUB if settings.socket == "sub" else zmq.PULL)
        s = self.sock
        s.setsockopt(zmq.RCVHWM, settings.rcvhwm)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.MAXMSGSIZE, 2 * settings.max_payload_bytes + (1 << 20))
        s.setsockopt(zmq.RECONNECT_IVL, 100)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        hb = max(1, int(settings.heartbeat_s * 1000))
        s.setsockopt(zmq.HEARTBEAT_IVL, hb)
        s.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * hb)
        if settings.socket == "sub":
            s.setsockopt(zmq.SUBSCRIBE, b"")
        if settings.bind:
            s.bind(settings.endpoint)
        else:
            s.connect(settings.endpoint)
        self.endpoint = s.getsockopt_string(zmq.LAST_ENDPOINT) or settings.endpoint
        self.last_frame_time = 0.0

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if poller.poll(100):
                    for _ in range(64):
                        try:
                            parts = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self.handle(parts)
                self.check_timeout()
        finally:
            self.sock.close(linger=0)

    # --- the state machine ------------------------------------------------------------------------
    def check_timeout(self, now: float | None = None) -> bool:
        """Close the open series when nothing arrived for ``series_timeout_s``; True if it did."""
        now = time.monotonic() if now is None else now
        if now - self.state.last_activity < self.settings.series_timeout_s:
            return False
        for msg in self.v1.flush():  # a header whose configuration never came
            self._series(msg)
        if self.state.acq is None:
            return False
        self.dm.timeouts.inc()
        log.warning(
            "series %s: no message for %.1f s, closing it", self.state.acq, self.settings.series_timeout_s
        )
        self._close_open("timeout")
        return True

    def handle(self, parts: list[Any]) -> None:
        """Decode, check against the series state, dispatch."""
        t0 = time.perf_counter()
        self.state.last_activity = time.monotonic()
        try:
            msgs = self._decode(parts)
        except ProtocolError as exc:
            self.metrics.frames_malformed.labels(reason=exc.reason).inc()
            log.debug("dropped malformed DECTRIS message: %s", exc)
            return
        for msg in msgs:
            if isinstance(msg, SeriesMessage):
                self._series(msg)
            elif isinstance(msg, FrameMessage):
                self._frame(msg, t0)

    def _emit_series(self, topic: bytes, acq: str, meta: dict[str, Any], n: int | None = None) -> None:
        self.metrics.series.labels(topic=topic.decode()).inc()
        if self.on_series is not None:
            self.on_series(SeriesMessage(topic, SeriesHeader(acq, time.time(), meta, n)))

    def _close_open(self, reason: str) -> None:
        st = self.state
        if st.acq is None:
            return
        meta = {"series": st.series, "frames_received": st.received, "end_reason": reason}
        if st.expected is not None:
            meta["frames_expected"] = st.expected
        acq, n = st.acq, st.received
        st.close()
        self._emit_series(TOPIC_SERIES_END, acq, meta, n)

    def _series(self, msg: SeriesMessage) -> None:
        st, h = self.state, msg.header
        if msg.topic == TOPIC_SERIES_START:
            if st.acq is not None:
                self.dm.superseded.inc()
                self.metrics.restarts.inc()
                self._close_open("superseded")
            st.open(h.acq, h.meta.get("series"), h.n_frames)
            self._emit_series(TOPIC_SERIES_START, h.acq, h.meta, h.n_frames)
            return
        if st.acq != h.acq:  # the end of a series we already closed, or never saw
            self.dm.stale.inc()
            return
        self._close_open("series_end")

    def _frame(self, msg: FrameMessage, t0: float) -> None:
        st, h, m = self.state, msg.header, self.metrics
        if st.acq != h.acq:
            if h.acq in st.closed:
                self.dm.stale.inc()  # queued behind its series' end, or a timed-out series' tail
                return
            if st.acq is not None:
                self.dm.superseded.inc()
                self._close_open("superseded")
            self.dm.joined.inc()
            st.open(h.acq, h.meta.get("series"), None)
            self._emit_series(TOPIC_SERIES_START, h.acq, {"series": h.meta.get("series"), "joined": True})
        if not count_sequence_event(m, *st.tracker.observe(h.acq, h.seq)):
            return
        st.received += 1
        m.frames_received.inc()
        self.last_frame_time = time.monotonic()
        m.stage_latency.labels(stage="decode").observe(time.perf_counter() - t0)
        chunk = msg.chunk if isinstance(msg, DectrisFrameMessage) else None
        series = msg.series if isinstance(msg, DectrisFrameMessage) else 0
        self.on_frame(DectrisFrame(h, msg.data, t0, chunk=chunk, series=series))
