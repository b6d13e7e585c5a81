"""The one ZeroMQ receiver: socket, poll loop and exception guard, with a plug-in per input dialect.

The receive thread only decodes (zero-copy), checks continuity and hands frames to non-blocking
callbacks. Anything slower (recording, denoising) happens on other threads behind bounded queues,
because a receiver that stalls makes ZeroMQ drop frames silently at its high-water mark.

Everything that touches the socket is here, once, for every dialect: socket options, CURVE, the
loop, and the guard that turns an exception raised while dispatching (a bug downstream, never bad
input: that is a ``ProtocolError`` the plug-in counts) into ``frames_malformed{reason=
"internal_error"}`` plus a traceback in the log, instead of a dead thread. Decoding and accounting are
the plug-ins' (``sources/wire_v1.py``, ``sources/dectris/acquisition.py``), which have no sockets.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, assert_never

import zmq

from sbd_stream.config import DectrisInput, IngestSettings, InputSocket, SocketMode, WireV1Input
from sbd_stream.frames import FrameHandler, SeriesHandler
from sbd_stream.metrics import Metrics
from sbd_stream.security import apply_curve
from sbd_stream.sources.dectris.acquisition import DectrisDialect
from sbd_stream.sources.dialect import Dialect, Emitter
from sbd_stream.sources.wire_v1 import WireV1Dialect
from sbd_stream.worker import BackgroundWorker

__all__ = ["Receiver", "open_dialect", "open_receiver"]

log = logging.getLogger(__name__)

POLL_MS = 100  # also the tick period while idle: bounds how late a dialect timeout fires
DRAIN = 64  # messages taken per wake-up before polling again: fewer syscalls under load
RECONNECT_IVL_MS, RECONNECT_IVL_MAX_MS = 100, 2000  # re-dial a restarted sender quickly, then back off
CURVE_DOMAIN = "sbd-ingest"
_SOCKET_KINDS = {InputSocket.sub: zmq.SUB, InputSocket.pull: zmq.PULL}


class Receiver(BackgroundWorker):
    """Receive thread for any dialect. Handlers must not block; nothing received can end the thread."""

    thread_name = "sbd-ingest"

    def __init__(
        self,
        settings: IngestSettings,
        dialect: Dialect,
        metrics: Metrics,
        context: zmq.Context | None = None,
    ) -> None:
        self.settings, self.dialect, self.metrics = settings, dialect, metrics
        self.ctx = context or zmq.Context.instance()
        self._init_worker()
        self.sock = self._open()
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT) or settings.endpoint

    def _open(self) -> zmq.Socket:
        s, spec = self.settings, self.dialect.socket
        sock = self.ctx.socket(_SOCKET_KINDS[spec.kind])
        try:
            sock.setsockopt(zmq.RCVHWM, s.rcvhwm)
            sock.setsockopt(zmq.LINGER, 0)
            # Memory guard: libzmq refuses (and disconnects the peer for) a part far larger than any
            # valid frame before allocating it; parts just over the limit reach the decoder, counted.
            sock.setsockopt(zmq.MAXMSGSIZE, 2 * s.max_payload_bytes + (1 << 20))
            sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
            if spec.heartbeat_s is not None:
                hb = max(1, int(spec.heartbeat_s * 1000))
                sock.setsockopt(zmq.HEARTBEAT_IVL, hb)
                sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * hb)
            if spec.kind is InputSocket.sub:
                sock.setsockopt(zmq.SUBSCRIBE, b"")
            binds = s.mode is SocketMode.bind
            apply_curve(sock, s.curve, binds, CURVE_DOMAIN)  # before bind / connect, or it is not used
            if binds:
                sock.bind(s.endpoint)
            else:
                sock.connect(s.endpoint)
        except BaseException:
            sock.close(linger=0)
            raise
        return sock

    def _guarded(self, what: str, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # a bug downstream must not end reception
            self.metrics.frames_malformed.labels(reason="internal_error").inc()
            log.exception("%s input: %s failed", self.dialect.name, what)

    def dispatch(self, parts: list[Any]) -> None:
        """Hand one received multipart message to the dialect, behind the exception guard."""
        self._guarded("handling a received message", self.dialect.handle, parts)

    def tick(self, now: float | None = None) -> None:
        """Let the dialect act on time (series timeouts), behind the same guard."""
        self._guarded("a timeout check", self.dialect.tick, time.monotonic() if now is None else now)

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if poller.poll(POLL_MS):
                    for _ in range(DRAIN):
                        try:
                            parts = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self.dispatch(parts)
                self.tick()
        finally:
            self.sock.close(linger=0)

    def close(self) -> None:
        """Release the socket of a receiver that was never started (a started one closes its own)."""
        if self._thread is None:
            self.sock.close(linger=0)


def open_dialect(settings: IngestSettings, emit: Emitter) -> Dialect:
    """The plug-in for ``settings.input`` (its ``dialect`` tag picked the settings variant)."""
    match settings.input:
        case DectrisInput() as inp:
            return DectrisDialect(inp, settings.max_payload_bytes, emit)
        case WireV1Input():
            return WireV1Dialect(settings.max_payload_bytes, emit)
        case other:
            assert_never(other)


def open_receiver(
    settings: IngestSettings,
    metrics: Metrics,
    on_frame: FrameHandler,
    on_series: SeriesHandler | None = None,
    context: zmq.Context | None = None,
) -> Receiver:
    """A receiver with its socket open (bound or connecting) and the dialect the settings name.

    Call ``start()`` to receive; ``on_frame`` / ``on_series`` run on the receive thread and must
    not block.
    """
    return Receiver(settings, open_dialect(settings, Emitter(metrics, on_frame, on_series)), metrics, context)
