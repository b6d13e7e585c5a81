"""The one ZeroMQ receiver: socket, poll loop and exception guard, with a plug-in per input dialect.

The receive thread only decodes (zero-copy), checks continuity and hands frames to non-blocking
callbacks. Anything slower (recording, denoising) happens on other threads behind bounded queues,
because a receiver that stalls makes ZeroMQ drop frames silently at its high-water mark.

Everything that touches the socket is here, once, for every dialect: socket options, CURVE, the
loop, re-dialling a peer libzmq refused (``sources/transport.py``), and the guard that turns an
exception raised while dispatching (a bug downstream, never bad input: that is a ``ProtocolError``
the plug-in counts) into ``frames_malformed{reason="internal_error"}`` and
``stage_errors{stage="receiver"}`` plus a traceback in the log, instead of a dead thread. The loop
itself runs under the service's supervisor, which restarts it if it dies. Decoding and accounting
are the plug-ins' (``sources/wire_v1.py``, ``sources/dectris/acquisition.py``), without sockets.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from typing import Any, assert_never

import zmq

from sbd_stream.config import DectrisInput, IngestSettings, InputSocket, SocketMode, WireV1Input
from sbd_stream.frames import FrameHandler, SeriesHandler
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import ipv6_endpoint
from sbd_stream.security import apply_curve, warn_if_exposed
from sbd_stream.sources.dectris.acquisition import DectrisDialect
from sbd_stream.sources.dialect import Dialect, Emitter
from sbd_stream.sources.transport import TransportWatch
from sbd_stream.sources.wire_v1 import WireV1Dialect
from sbd_stream.supervisor import Supervisor
from sbd_stream.worker import BackgroundWorker
from sbd_stream.zmq_bind import bind_held

__all__ = ["Receiver", "endpoint_problem", "max_message_bytes", "open_dialect", "open_receiver"]

log = logging.getLogger(__name__)

POLL_MS = 100  # also the tick period while idle: bounds how late a dialect timeout fires
DRAIN = 64  # messages taken per wake-up before polling again: fewer syscalls under load
RECONNECT_IVL_MS = 100  # re-dial a sender that is not up (yet) or restarted: libzmq adds 0-100 ms jitter
RECONNECT_IVL_MAX_MS = 250
"""Ceiling of libzmq's re-dial back-off for a connecting input: a bridge that binds, waits 1 s (the
documented wait, docs/wire-format.md "Bridge pseudo-code") and sends is dialled within ~0.35 s. At the
2000 ms used before (audit h35, D6) a service idle more than ~3 s dialled a new PUB 1.2-1.9 s after its
bind, and a short acquisition sent after the 1 s wait was lost whole, not even counted. The cost: 3-4
refused dials a second while no sender is up, on loopback or a LAN negligible (a SYN and a RST)."""
REDIAL_MIN_S, REDIAL_MAX_S = 0.1, 2.0  # re-creating a socket after a refused peer (a misbehaving one): slower
CURVE_DOMAIN = "sbd-ingest"
_SOCKET_KINDS = {InputSocket.sub: zmq.SUB, InputSocket.pull: zmq.PULL}


class Receiver(BackgroundWorker):
    """Receive thread for any dialect. Handlers must not block; nothing received can end the thread."""

    thread_name = "sbd-ingest"
    stage = "receiver"

    def __init__(
        self,
        settings: IngestSettings,
        dialect: Dialect,
        metrics: Metrics,
        context: zmq.Context | None = None,
        supervisor: Supervisor | None = None,
    ) -> None:
        self.settings, self.dialect, self.metrics = settings, dialect, metrics
        self.ctx = context or zmq.Context.instance()
        self._init_worker(supervisor)
        self.connects = settings.mode is SocketMode.connect
        problem = endpoint_problem(settings.endpoint, binds=not self.connects)
        if problem:  # before the warning below: "foo" is no address, let alone one open to the network
            raise ValueError(f"ingest.endpoint {settings.endpoint!r}: {problem}")
        if not self.connects:
            warn_if_exposed(f"{dialect.name} input", settings.endpoint)
        self.sock = self._open(settings.endpoint)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT) or settings.endpoint
        if not self.connects and self.endpoint != settings.endpoint:  # "*" or ":0": say which port
            log.info("%s input bound on %s", dialect.name, self.endpoint)
        self.watch = TransportWatch(self.sock, self.connects, metrics, dialect.name)
        self._redial_delay = REDIAL_MIN_S
        self._redial_not_before = 0.0
        self._must_redial = False

    def _open(self, endpoint: str) -> zmq.Socket:
        s, spec = self.settings, self.dialect.socket
        sock = self.ctx.socket(_SOCKET_KINDS[spec.kind])
        try:
            sock.setsockopt(zmq.RCVHWM, s.rcvhwm)
            sock.setsockopt(zmq.LINGER, 0)
            # Memory guard: libzmq refuses (and disconnects the peer for) a part far larger than any
            # valid frame before allocating it; parts just over the limit reach the decoder, counted.
            # A refused peer of a connecting socket is re-dialled by hand (sources/transport.py).
            sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes(s.max_payload_bytes))
            sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
            sock.setsockopt(zmq.IPV6, ipv6_endpoint(endpoint))  # tcp://[::1]:5555 (protocol.py: why)
            if spec.heartbeat_s is not None:
                hb = max(1, int(spec.heartbeat_s * 1000))
                sock.setsockopt(zmq.HEARTBEAT_IVL, hb)
                sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * hb)
            if spec.kind is InputSocket.sub:
                sock.setsockopt(zmq.SUBSCRIBE, b"")
            binds = s.mode is SocketMode.bind
            apply_curve(sock, s.curve, binds, CURVE_DOMAIN)  # before bind / connect, or it is not used
            if binds:
                bind_held(sock, endpoint)  # on the port held since start-up (cli.service_start), adopted
            else:
                sock.connect(endpoint)
        except BaseException:
            sock.close(linger=0)
            raise
        return sock

    def _guarded(self, what: str, fn: Callable[..., None], *args: Any) -> None:
        """A bug downstream must not end reception: counted as internal_error and per stage, logged."""
        self.supervisor.call(
            self.stage, lambda _item: fn(*args), args[0] if args else None,
            on_error=self._internal_error, logger=log, what=f"{self.dialect.name} input: {what}",
        )  # fmt: skip

    def _internal_error(self, _item: Any, _exc: Exception) -> None:
        self.metrics.frames_malformed.labels(reason="internal_error").inc()

    def dispatch(self, parts: list[Any]) -> None:
        """Hand one received multipart message to the dialect, behind the exception guard."""
        self._guarded("handling", self.dialect.handle, parts)

    def tick(self, now: float | None = None) -> None:
        """Let the dialect act on time (series timeouts), behind the same guard."""
        self._guarded("a timeout check at", self.dialect.tick, time.monotonic() if now is None else now)

    def _drain(self, limit: int) -> int:
        """Dispatch up to ``limit`` waiting messages; returns how many there were."""
        for n in range(limit):
            try:
                parts = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return n
            self.dispatch(parts)
        return limit

    def _redial(self, now: float) -> None:
        """Re-create a connecting socket whose peer libzmq refused (it would never re-dial itself)."""
        self._drain(1 << 20)  # what already arrived on the old socket is still good input
        self.watch.close()
        self.sock.close(linger=0)
        self.sock = self._open(self.settings.endpoint)
        self.watch = TransportWatch(self.sock, self.connects, self.metrics, self.dialect.name)
        self.metrics.input_reconnects.inc()
        self._must_redial = False
        self._redial_not_before = now + self._redial_delay
        self._redial_delay = min(REDIAL_MAX_S, 2 * self._redial_delay)

    def _run(self) -> None:
        """The loop; after a crash the supervisor runs it again on the same socket."""
        while not self._stop.is_set():
            poller = zmq.Poller()
            poller.register(self.sock, zmq.POLLIN)
            poller.register(self.watch.mon, zmq.POLLIN)
            while not self._stop.is_set():
                if dict(poller.poll(POLL_MS)).get(self.sock) and self._drain(DRAIN):
                    self._redial_delay = REDIAL_MIN_S  # a working connection resets the back-off
                self.tick()
                now = time.monotonic()
                self._must_redial = self.watch.poll(now) or self._must_redial
                if self._must_redial and now >= self._redial_not_before:
                    self._redial(now)
                    break  # a new socket: a new poller

    def _finalize(self) -> None:
        self.watch.close()
        self.sock.close(linger=0)

    def close(self) -> None:
        """Release the socket of a receiver that was never started (a started one closes its own)."""
        if self._thread is None:
            self._finalize()


ZMQ_SCHEMES = ("tcp", "ipc", "inproc", "ws", "wss", "pgm", "epgm", "tipc", "vmci", "udp")
"""Transports libzmq may know (which it was built with decides at bind / connect time)."""


def endpoint_problem(endpoint: str, binds: bool) -> str | None:
    """Why ``endpoint`` cannot be a ZeroMQ address, or None: checked before any socket is opened.

    Why here and not left to libzmq: its ``ZMQError: Invalid argument`` names neither the setting nor
    the rule, a port over 65535 is silently taken modulo 65536 (``:99999`` bound port 34463), and a
    bind to a malformed address first logged that it was "reachable from other machines". Only what is
    certainly wrong is refused; host names and interface names are left to libzmq (``bind`` /
    ``connect`` errors are reported where they happen).
    """
    scheme, sep, address = endpoint.partition("://")
    if not sep or not scheme:
        return "not a ZeroMQ endpoint (transport://address, e.g. tcp://127.0.0.1:5556)"
    if scheme not in ZMQ_SCHEMES:
        return f"unknown transport {scheme!r} (tcp, ipc or inproc)"
    if not address:
        return "no address after the transport"
    if scheme not in ("tcp", "ws", "wss", "udp"):
        return None
    address = address.rsplit(";", 1)[-1]  # tcp://source;destination (connect): check the destination
    address = address.split("/", 1)[0]  # ws://host:port/path
    host, colon, port = address.rpartition(":")
    if not colon or not host:
        return "needs host:port (e.g. tcp://127.0.0.1:5556, or tcp://127.0.0.1:* for any free port)"
    if port == "*" and binds:
        return None
    if not (port.isdigit() and (0 if binds else 1) <= int(port) <= 65535):
        return f"port {port!r} is not 1 to 65535" + (" (or * for any free port)" if binds else "")
    bare = host.strip("[]")
    literal = host.startswith("[") or bare.replace(".", "").isdigit()  # an IP address, not a name
    if literal:
        try:
            ipaddress.ip_address(bare)
        except ValueError:
            return f"{bare} is not an IP address"
    return None


def max_message_bytes(max_payload_bytes: int) -> int:
    """The input socket's ``MAXMSGSIZE``: room for a frame, its header and a compressed chunk."""
    return 2 * max_payload_bytes + (1 << 20)


def open_dialect(settings: IngestSettings, emit: Emitter) -> Dialect:
    """The plug-in for ``settings.input`` (its ``dialect`` tag picked the settings variant)."""
    match settings.input:
        case DectrisInput() as inp:
            emit.docs = "docs/dectris.md"  # its refusal reasons are listed there
            return DectrisDialect(inp, settings.max_payload_bytes, emit)
        case WireV1Input() as inp:
            return WireV1Dialect(settings.max_payload_bytes, emit, inp.socket_type)
        case other:
            assert_never(other)


def open_receiver(
    settings: IngestSettings,
    metrics: Metrics,
    on_frame: FrameHandler,
    on_series: SeriesHandler | None = None,
    context: zmq.Context | None = None,
    supervisor: Supervisor | None = None,
) -> Receiver:
    """A receiver with its socket open (bound or connecting) and the dialect the settings name.

    Call ``start()`` to receive; ``on_frame`` / ``on_series`` run on the receive thread and must
    not block. ``supervisor``: the service's (default: one of its own).
    """
    dialect = open_dialect(settings, Emitter(metrics, on_frame, on_series))
    return Receiver(settings, dialect, metrics, context, supervisor)
