"""The DECTRIS series state machine, as a receiver plug-in (no socket: sbd_stream/sources/receiver.py).

DECTRIS DCUs bind a PUSH socket and send each message to exactly one connected PULL; a fan-out proxy
may republish on PUB, hence SUB as well. Several ``serve`` instances PULLing from one DCU share its
images round-robin (docs/scale-out-nodes.md): the start and end messages reach one instance each, so
the others take the joined path below and close the series on the inactivity timeout.

The state machine exists because real series misbehave: the receiver may join mid-series (the
header went to nobody, or to another instance), a series end may never come (the inactivity
timeout closes it), a restarted DCU re-sends series ids, and messages of an earlier
series may still be queued when a new one starts (they are drained, counted as stale, never mixed
into the new recording). Reconnection is ZeroMQ's: a connected socket re-dials the sender's port
until it comes back; ZMTP heartbeats (asked for through ``SocketSpec``) notice a peer that vanished
without closing.

It emits the same ``Frame`` / ``SeriesMessage`` objects as wire format v1, with ``Frame.chunk`` set
when the detector sent bitshuffle-LZ4, so the recorder can store it without recompressing.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter

from sbd_stream.config import DectrisInput, InputDialect
from sbd_stream.frames import Frame
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
from sbd_stream.sources.dectris.messages import DectrisFrameMessage, StreamV1Decoder, decode_stream_v2
from sbd_stream.sources.dialect import Emitter, SocketSpec
from sbd_stream.sources.sequence import SeqEvent, SequenceTracker, count_sequence_event

__all__ = ["DectrisDialect", "DectrisMetrics", "SeriesState"]

log = logging.getLogger(__name__)


class DectrisMetrics:
    """Counters only this dialect has, registered once on the service's own registry."""

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
        self.resumed = Counter(
            "sbd_dectris_series_resumed",
            "Series the inactivity timeout closed, reopened by their next frame (an externally triggered "
            "series waiting for its trigger)",
            registry=r,
        )

    @classmethod
    def of(cls, metrics: Metrics) -> DectrisMetrics:
        """The one instance per registry: registering the same names twice would raise."""
        dm = metrics.__dict__.get("_dectris_metrics")
        if dm is None:
            dm = metrics.__dict__["_dectris_metrics"] = cls(metrics)
        return dm


REUSED_AFTER_S = 2.0
"""A frame of a closed series this long after its end starts the id again (``SeriesState.reused``)."""


class SeriesState:
    """The open series (if any) and the recently closed ones whose late messages are stale."""

    def __init__(self, remember: int = 64) -> None:
        self.acq: str | None = None
        self.series: int | None = None
        self.expected: int | None = None
        self.received = 0
        self.tracker = SequenceTracker()
        self.closed: collections.deque[str] = collections.deque(maxlen=remember)
        self.closed_at: dict[str, float] = {}  # when each remembered series closed (monotonic)
        self.last_activity = time.monotonic()
        # the open series' start metadata (the detector configuration): a resumed series states it again
        self.meta: dict[str, Any] = {}
        # the series the inactivity timeout closed last, while nothing else opened since: (acq, series,
        # expected, received, start meta). Its next frame resumes it (with its continuity), not stale
        self.paused: tuple[str, int | None, int | None, int, dict[str, Any]] | None = None

    def open(self, acq: str, series: int | None, expected: int | None, meta: dict[str, Any]) -> None:
        self.acq, self.series, self.expected, self.received = acq, series, expected, 0
        self.meta = dict(meta)  # a copy: the pipeline owns the emitted one
        self.tracker.reset(acq)
        self.paused = None
        if acq in self.closed:  # a restarted sender may reuse the id: a new start makes it current
            self.closed.remove(acq)

    def close(self, reason: str = "series_end") -> None:
        if self.acq is not None:
            self.closed.append(self.acq)
            self.closed_at[self.acq] = time.monotonic()
            if len(self.closed_at) > 2 * (self.closed.maxlen or 0):  # forget the ones the deque forgot
                self.closed_at = {a: self.closed_at[a] for a in self.closed if a in self.closed_at}
            paused = (self.acq, self.series, self.expected, self.received, self.meta)
            self.paused = paused if reason == "timeout" else None
        self.acq = self.series = self.expected = None

    def reused(self, acq: str, seq: int) -> bool:
        """Whether a frame of the closed series ``acq`` starts that id again: nothing is open, and it is
        frame 0 or comes more than ``REUSED_AFTER_S`` after the series closed.

        Why: a detector restarted between series may number them from the same id again; with that
        start message lost (sent before we reconnected), every frame of the new series was "stale" and
        dropped, the whole series lost. A closed series' own late messages come right behind its end (a
        queue drained), and never as frame 0 again, which its first frame already was."""
        if self.acq is not None:  # a newer series is open: a late frame of an old one is stale
            return False
        closed = self.closed_at.get(acq)
        return seq == 0 or (closed is not None and time.monotonic() - closed > REUSED_AFTER_S)

    def resume(self, acq: str) -> bool:
        """Reopen ``acq`` if it is the series the timeout closed last (nothing opened since); the
        sequence tracker still holds its numbering, so no frame counts as missing or late."""
        if self.acq is not None or self.paused is None or self.paused[0] != acq:
            return False
        self.acq, self.series, self.expected, self.received, self.meta = self.paused
        self.paused = None
        if acq in self.closed:
            self.closed.remove(acq)
        return True


class DectrisDialect:
    """Plug-in for DECTRIS SIMPLON stream v1 and stream v2 (the series state machine)."""

    def __init__(self, settings: DectrisInput, max_payload_bytes: int, emit: Emitter) -> None:
        self.settings, self.emit = settings, emit
        self.name: str = settings.dialect
        self.socket = SocketSpec(settings.socket_type, settings.heartbeat_s)
        self.metrics = emit.metrics
        self.dm = DectrisMetrics.of(emit.metrics)
        self.v1 = StreamV1Decoder(max_payload_bytes)
        self.state = SeriesState()
        self._decode: Callable[[list[Any]], list[Message]] = (
            self.v1.decode
            if settings.dialect == InputDialect.dectris_v1.value
            else lambda parts: decode_stream_v2(parts, max_payload_bytes)
        )

    def handle(self, parts: list[Any]) -> None:
        """Decode, check against the series state, dispatch."""
        t0 = time.perf_counter()
        self.state.last_activity = time.monotonic()
        try:
            msgs = self._decode(parts)
        except ProtocolError as exc:
            self.emit.malformed(exc, self.name)
            return
        for msg in msgs:
            if isinstance(msg, SeriesMessage):
                self._series(msg)
            elif isinstance(msg, FrameMessage):
                self._frame(msg, t0)

    def tick(self, now: float) -> None:
        self.check_timeout(now)

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

    # --- the state machine ------------------------------------------------------------------------
    def _emit_series(self, topic: bytes, acq: str, meta: dict[str, Any], n: int | None = None) -> None:
        self.emit.series(SeriesMessage(topic, SeriesHeader(acq, time.time(), meta, n)))

    def _close_open(self, reason: str) -> None:
        st = self.state
        if st.acq is None:
            return
        meta = {"series": st.series, "frames_received": st.received, "end_reason": reason}
        if st.expected is not None:
            meta["frames_expected"] = st.expected
        acq, n = st.acq, st.received
        st.close(reason)
        self._emit_series(TOPIC_SERIES_END, acq, meta, n)

    def _series(self, msg: SeriesMessage) -> None:
        st, h = self.state, msg.header
        if msg.topic == TOPIC_SERIES_START:
            if st.acq is not None:
                self.dm.superseded.inc()
                self.metrics.restarts.inc()
                self._close_open("superseded")
            st.open(h.acq, h.meta.get("series"), h.n_frames, h.meta)
            self._emit_series(TOPIC_SERIES_START, h.acq, h.meta, h.n_frames)
            return
        if st.acq != h.acq:  # the end of a series we already closed, or never saw
            self.dm.stale.inc()
            return
        self._close_open("series_end")

    def _frame(self, msg: FrameMessage, t0: float) -> None:
        st, h = self.state, msg.header
        if st.acq != h.acq and st.resume(h.acq):
            # a series only paused (an external trigger came late): its frames are valid data, not stale
            self.dm.resumed.inc()
            log.warning(
                "series %s: a frame after the %.1f s inactivity timeout closed it; reopened (meta.resumed)",
                h.acq,
                self.settings.series_timeout_s,
            )
            # the same series: its configuration again (the new part's series_meta, count time), marked
            meta = {**st.meta, "series": st.series, "resumed": True}
            self._emit_series(TOPIC_SERIES_START, h.acq, meta, st.expected)
        reused = False
        if st.acq != h.acq:
            if h.acq in st.closed and not (reused := st.reused(h.acq, h.seq)):
                self.dm.stale.inc()  # queued behind its series' end, or superseded by a newer series
                return
            if st.acq is not None:
                self.dm.superseded.inc()
                self._close_open("superseded")
            self.dm.joined.inc()  # once per series: from here on it is the open one
            if reused:
                log.warning(
                    "%s: frame %d of series %s after that series ended: the detector numbers a new series "
                    "with the same id (restarted?) and its start was not received; joined as a new series",
                    self.name,
                    h.seq,
                    h.acq,
                )
            else:
                log.info(
                    "%s: joined series %s mid-way (its start went to another PULL instance, or before we "
                    "connected): denoising and recording its frames from frame %d on",
                    self.name,
                    h.acq,
                    h.seq,
                )
            meta = {"dialect": self.name, "series": h.meta.get("series"), "joined": True}
            st.open(h.acq, h.meta.get("series"), None, meta)
            self._emit_series(TOPIC_SERIES_START, h.acq, meta)
        event, missing = st.tracker.observe(h.acq, h.seq)
        if not count_sequence_event(self.metrics, event, missing):
            return
        st.received += 1
        chunk = msg.chunk if isinstance(msg, DectrisFrameMessage) else None
        series = msg.series if isinstance(msg, DectrisFrameMessage) else 0
        restart = event is SeqEvent.restart
        self.emit.frame(Frame(h, msg.data, t0, chunk=chunk, series=series, seq_restart=restart))
