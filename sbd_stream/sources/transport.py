"""What happened to the input's connections, from ZeroMQ's socket monitor, and when to re-dial by hand.

Why this exists: libzmq refuses a message part over the socket's ``MAXMSGSIZE`` (the memory guard,
2 x ``ingest.max_payload_bytes`` + 1 MiB) by dropping that peer's connection as a protocol error.
A *connecting* socket does not re-dial after a protocol error (it only does after a connection
error), so an input in connect mode -- wire format v1 SUB to a bridge, DECTRIS PULL to a DCU --
went silent forever after one oversized part, without a log line or a counter.

The monitor tells us. After a normal disconnect of a connecting socket libzmq schedules a re-dial
at once (``EVENT_CONNECT_RETRIED`` right after ``EVENT_DISCONNECTED``, from the same I/O thread);
after a protocol error it does not. So a disconnect with no re-dial within ``GRACE_S`` is a refused
peer: counted (``sbd_input_disconnects_total{cause="refused"}`` and, because an oversized part is
what causes it in practice, ``sbd_frames_malformed_total{reason="oversized"}``) and answered by
re-creating the socket. A failed ZMTP / CURVE handshake is counted as ``cause="handshake"`` and
re-dialled the same way (libzmq would not), never as oversized.

A *bound* socket needs no re-dial: the peer connects, and it re-dials by itself after we drop it.
There libzmq gives no reason for a disconnect, so an oversized part is counted as
``cause="closed"``, like a peer that went away.

Logging: every event is counted, but only the first of each cause is logged at its level; later
ones go to DEBUG, with at most one summary line a minute ("N more handshake failures since ...",
``log_limit.py``). An unauthenticated peer re-dialling a CURVE input wrote 8,328 WARNING lines in
seconds. The limit is kept per service and input (its metrics and name), so re-created sockets share it.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from sbd_stream.log_limit import RateLimitedLog

__all__ = ["GRACE_S", "TransportWatch"]

log = logging.getLogger(__name__)

GRACE_S = 0.3
"""How long after a disconnect a connecting socket has to schedule its own re-dial."""
INPUT_LIMIT = "ingest.max_payload_bytes x 2 + 1 MiB"
"""The service input's largest message part, as the refused peer's line names it."""


def _text(endpoint: Any) -> str:
    """The monitor gives the endpoint as bytes: shown as ``tcp://...``, not ``b'tcp://...'``."""
    return endpoint.decode(errors="replace") if isinstance(endpoint, bytes) else str(endpoint)


_HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
EVENTS = zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED | _HANDSHAKE_FAILED

_limits: weakref.WeakKeyDictionary[Any, dict[str, RateLimitedLog]] = weakref.WeakKeyDictionary()


def _limit(metrics: Any, name: str) -> RateLimitedLog:
    """The rate limit of one service's input ``name``: a socket re-created after a refused peer (a new
    ``TransportWatch``) goes on with it instead of logging its first events at full level again."""
    try:
        per_input = _limits.setdefault(metrics, {})
    except TypeError:  # metrics that cannot be weakly referenced: a limit of this watch's own
        return RateLimitedLog(log)
    return per_input.setdefault(name, RateLimitedLog(log))


class TransportWatch:
    """Reads one socket's monitor; ``poll`` says when the socket must be re-created."""

    def __init__(
        self, sock: zmq.Socket, connects: bool, metrics: Any, name: str, limit: str = INPUT_LIMIT
    ) -> None:
        """``limit``: how the refused peer's line names the size limit (the merge's is its own)."""
        self.sock, self.connects, self.metrics, self.name, self.limit = sock, connects, metrics, name, limit
        self.mon: zmq.Socket = sock.get_monitor_socket(EVENTS)
        self._dropped_at: float | None = None
        self._handshake_failed = False
        self.log = _limit(metrics, name)

    def poll(self, now: float) -> bool:
        """Take every pending monitor event; True when the peer was refused and nobody re-dials."""
        while True:
            try:
                ev = recv_monitor_message(self.mon, zmq.NOBLOCK)
            except zmq.Again:
                break
            self._event(int(ev["event"]), ev.get("endpoint"), now)
        self.log.tick()  # a summary of held-back lines once a minute, also after a burst stopped
        if self._dropped_at is None or now - self._dropped_at < GRACE_S:
            return False
        self._dropped_at = None
        if self._handshake_failed:
            self._handshake_failed = False
            self.log.log(
                "redial", logging.WARNING, "re-dials after a failed handshake",
                "%s input: handshake with the peer failed; re-dialling", self.name,
            )  # fmt: skip
            return True
        self.metrics.input_disconnects.labels(cause="refused").inc()
        self.metrics.frames_malformed.labels(reason="oversized").inc()
        self.log.log(
            "refused", logging.ERROR, "peers dropped for a protocol error",
            "%s input: libzmq dropped the peer for a protocol error -- in practice a message part over "
            "the maximum message size (%s); re-creating the socket",
            self.name, self.limit,
        )  # fmt: skip
        return True

    def _event(self, event: int, endpoint: Any, now: float) -> None:
        if event & _HANDSHAKE_FAILED:
            self._handshake_failed = True
            self.metrics.input_disconnects.labels(cause="handshake").inc()
            self.log.log(
                "handshake", logging.WARNING, f"{self.name} input handshake failures",
                "%s input: handshake failed with %s (event %#x)", self.name, _text(endpoint), event,
            )  # fmt: skip
        elif event == zmq.EVENT_DISCONNECTED:
            if self.connects:
                self._dropped_at = now if self._dropped_at is None else self._dropped_at
            else:
                self._count_closed()
        elif event == zmq.EVENT_CONNECT_RETRIED and self._dropped_at is not None:
            self._dropped_at = None  # libzmq re-dials by itself: an ordinary disconnect
            self._count_closed()

    def _count_closed(self) -> None:
        if self._handshake_failed:  # already counted as a handshake failure
            self._handshake_failed = False
            return
        self.metrics.input_disconnects.labels(cause="closed").inc()
        self.log.log("closed", logging.INFO, "peer disconnects", "%s input: a peer disconnected", self.name)

    def close(self) -> None:
        with contextlib.suppress(zmq.ZMQError):
            self.sock.disable_monitor()
        self.mon.close(linger=0)
