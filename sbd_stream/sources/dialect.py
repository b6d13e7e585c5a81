"""The seam between the one receiver and its per-dialect plug-ins.

The receiver owns everything that touches a socket (options, CURVE, the poll loop, the exception
guard); a plug-in only turns received parts into frames and series messages. Two receive loops had
drifted apart before (one guarded its callback, one ignored CURVE), so the loop exists once and a
plug-in can't have one. Plug-ins without sockets are also what lets the DECTRIS state machine be
tested by feeding it parts directly.

What every dialect counts the same way (``frames_received``, the decode latency, series messages,
malformed reasons) goes through ``Emitter``, so the counters mean the same whichever detector is on.
It is also the last check at the edge for every dialect: ``meta`` holding NaN / Infinity (a DECTRIS
configuration with ``1e400`` in it, say) is refused as ``bad_meta`` here, and a ``ts`` naming no date
(``protocol.TS_MIN`` .. ``TS_MAX``) as ``bad_ts``, so no sink ever sees either. A frame's ``meta`` key
named like one the service sets itself (``frames.RESERVED_META``: ``blank``, ``hot_pixels``...) is
renamed ``meta.<key>`` here for every dialect, so an output's flags are always the service's word.

Every rejection is counted by reason, and the first one of each reason is logged at WARNING (what was
wrong, the metric to watch): a bridge sending a wrong field at 40 Hz was otherwise silent unless
someone read ``/metrics``. Later ones are logged at DEBUG, so a broken sender cannot flood the log.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

from sbd_stream.config import InputSocket
from sbd_stream.frames import RESERVED_META, Frame, FrameHandler, SeriesHandler, own_keys_renamed
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import ProtocolError, SeriesMessage, finite_json, ts_ok

__all__ = ["Dialect", "Emitter", "SocketSpec"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SocketSpec:
    """What a dialect needs of the socket beyond the options every input gets.

    ``heartbeat_s`` turns on ZMTP heartbeats: a PUSH sender that vanished without closing (a DCU
    power-cycled) is otherwise never noticed by a PULL that is waiting for it.
    """

    kind: InputSocket
    heartbeat_s: float | None = None


class Dialect(Protocol):
    """A decoder plus accounting for one input format; it never sees a socket."""

    name: str
    socket: SocketSpec

    def handle(self, parts: list[Any]) -> None:
        """Decode one received multipart message and emit what it held (raising is a bug, not input)."""

    def tick(self, now: float) -> None:
        """Called at least every ~100 ms with ``time.monotonic()``, for timeouts of the dialect."""


NOT_FINITE = "NaN, Infinity or a number no float holds"
"""What ``finite_json`` refuses (an integer past 1.8e308 too: it cannot be written as a JSON number)."""


class Emitter:
    """The plug-ins' only way out: shared counters first, then the pipeline's non-blocking handlers."""

    def __init__(
        self, metrics: Metrics, on_frame: FrameHandler, on_series: SeriesHandler | None = None
    ) -> None:
        self.metrics = metrics
        self.on_frame, self.on_series = on_frame, on_series
        self._reported: set[str] = set()  # rejection reasons already logged at WARNING
        self._renamed: set[str] = set()  # producer meta keys renamed so far (logged once each)
        self.docs = "docs/wire-format.md"  # where a refused message's reasons are listed (the dialect's)

    def frame(self, frame: Frame) -> None:
        """A frame that passed validation and continuity checks; ``t_recv`` is when decoding began."""
        m = self.metrics
        h = frame.header
        if not finite_json(h.meta):  # every dialect: its outputs must stay sendable
            self.reject("bad_meta", f"frame {h.seq} of {h.acq}: {NOT_FINITE} in meta")
            return
        if not ts_ok(h.ts):  # a date the recording can state (wire v1 checks it in decode)
            self.reject("bad_ts", f"frame {h.seq} of {h.acq}: ts {h.ts!r} names no date in years 1-9999")
            return
        if (meta := own_keys_renamed(h.meta)) is not None:
            self._said_renamed(h.meta, h.acq)
            frame = dataclasses.replace(frame, header=dataclasses.replace(h, meta=meta))
        m.frames_received.inc()
        m.stage_latency.labels(stage="decode").observe(time.perf_counter() - frame.t_recv)
        self.on_frame(frame)

    def _said_renamed(self, meta: dict[str, Any], acq: str) -> None:
        """One INFO line per key ever renamed (a bridge sending ``blank`` on every frame says it once)."""
        clash = RESERVED_META.intersection(meta)
        if clash <= self._renamed:
            return
        self._renamed |= clash
        log.info(
            "input %s: meta keys the service sets itself (%s) are passed on as meta.<key> (once per key)",
            acq, ", ".join(sorted(clash)),
        )  # fmt: skip

    def series(self, msg: SeriesMessage) -> None:
        if not finite_json(msg.header.meta) or not ts_ok(msg.header.ts):
            bad_meta = not finite_json(msg.header.meta)
            what = f"{NOT_FINITE} in meta" if bad_meta else f"ts {msg.header.ts!r} names no date"
            self.reject(
                "bad_meta" if bad_meta else "bad_ts", f"{msg.topic.decode()} of {msg.header.acq}: {what}"
            )
            return
        self.metrics.series.labels(topic=msg.topic.decode()).inc()
        if self.on_series is not None:
            self.on_series(msg)

    def malformed(self, exc: ProtocolError, dialect: str) -> None:
        """Bad input is counted by reason and otherwise ignored: a sender must not stop the service."""
        self.reject(exc.reason, f"{dialect} message: {exc}")

    def reject(self, reason: str, what: str) -> None:
        """Count one refused message under ``reason``; log the first of each reason at WARNING."""
        self.metrics.frames_malformed.labels(reason=reason).inc()
        if reason in self._reported:
            log.debug("dropped malformed input (%s): %s", reason, what)
            return
        self._reported.add(reason)
        docs = self.docs  # was told from ``what``, which a series message's text never started with
        log.warning(
            "dropped malformed input (%s): %s. Counted in sbd_frames_malformed_total{reason=\"%s\"} "
            "(reasons: %s); further %s messages are logged at DEBUG only",
            reason, what.rstrip("."), reason, docs, reason,
        )  # fmt: skip
