"""The HTTP server under ``/metrics`` and the viewer page: bounded in connections, time and file descriptors.

Why: ``http.server.ThreadingHTTPServer`` gives every connection a thread and a file descriptor for as
long as the peer keeps it open, and waits for a request line forever. An audit held 1,100 idle TCP
connections to ``/metrics``: the service reached its 1024-descriptor limit and the recorder could not
open the next acquisition's file (EMFILE), so frames were lost. Here each connection has
``TIMEOUT_S`` to send its request and take the answer, at most ``MAX_CONNECTIONS`` are served at once
(one more is closed as soon as it is accepted: a scraper or a browser needs a handful), and
:func:`raise_fd_limit` lifts the soft descriptor limit to the hard one at start-up.

``TIMEOUT_S`` is a deadline for the whole connection, not only for each read: with a timeout per read
alone, a peer sending one header line every few seconds held its slot for ever, and 64 of them kept
``/metrics`` and the viewer unreachable for as long as they liked (audit h30). A server on loopback
answers only requests whose ``Host`` names loopback (:class:`LoopbackHostHandler`): a web page the
microscope PC's browser opens can otherwise re-point its own host name at 127.0.0.1 (DNS rebinding)
and read the viewer's frames and status as same-origin data.

A port held while the engine loads (:func:`hold_port`) answers at once that the service is starting
(:class:`StartingHandler`: ``/healthz`` 503, ``/metrics`` ``sbd_starting 1``, the viewer's page says so)
until the real server adopts the socket: a probe or a scrape waited unanswered there for the whole
load, minutes with a TensorRT plan build (review h34).

A leaf (standard library only), so ``metrics`` and the viewer can both use it.
"""

from __future__ import annotations

import contextlib
import html
import http.server
import ipaddress
import json
import logging
import socket
import threading
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "IN_USE_HINT",
    "MAX_CONNECTIONS",
    "TIMEOUT_S",
    "ZMQ_IN_USE_HINT",
    "BoundedHTTPServer",
    "LoopbackHostHandler",
    "Starting",
    "StartingHandler",
    "binds_overlap",
    "drop_held",
    "hold_port",
    "host_allowed",
    "raise_fd_limit",
    "set_starting",
    "take_held",
    "url_host",
]

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 64
"""Connections served at once per server; Prometheus holds one, a viewer page a few."""
TIMEOUT_S = 10.0
"""Seconds a connection may take to send its request (and to read the answer) before it is closed."""


class BoundedHTTPServer(http.server.ThreadingHTTPServer):
    """A threading HTTP server with a per-connection timeout and a cap on concurrent connections.

    A connection over the cap is closed at once, without a thread: its descriptor is freed in
    microseconds, so a flood costs the listening backlog, never the process's descriptors.
    IPv6 hosts (``::``, ``::1``) bind an IPv6 socket (the stock server is IPv4 only and failed
    with "Address family for hostname not supported").
    """

    daemon_threads = True
    block_on_close = False  # close() never waits for a slow client: its thread is a daemon
    request_queue_size = 128  # listen backlog: 5 (the default) overflowed in bursts and peers waited 1 s

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[http.server.BaseHTTPRequestHandler],
        max_connections: int = MAX_CONNECTIONS,
        timeout_s: float = TIMEOUT_S,
        sock: socket.socket | None = None,
    ) -> None:
        """``sock``: a listening socket to serve on (the starting answer's); default: the one held
        for ``address`` (``hold_port``), else a new one bound here."""
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.max_connections, self.timeout_s = max_connections, timeout_s
        self._slots = threading.BoundedSemaphore(max_connections)
        self.refused = 0  # connections closed at once because every slot was taken
        # bound before the engine loaded (hold_port); its starting answer stops before this takes it
        held = sock if sock is not None else take_held(("http", address[0], address[1]))
        if held is None:
            super().__init__(address, handler)
            return
        super().__init__(address, handler, bind_and_activate=False)
        self.socket.close()  # the unbound one the constructor made: the held socket takes its place
        self.socket = held
        self.server_address = held.getsockname()
        self.server_name, self.server_port = socket.getfqdn(address[0]), int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            log.debug(
                "http: %d connections open, closing one more from %s", self.max_connections, client_address
            )
            self.shutdown_request(request)
            return
        try:
            request.settimeout(
                self.timeout_s
            )  # the handler's reads and writes; StreamRequestHandler keeps it
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()  # no thread started: give the slot back here
            self.shutdown_request(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        # the deadline: a peer trickling bytes never lets a read time out, so cut it off from outside
        deadline = threading.Timer(self.timeout_s, _cut, (request,))
        deadline.daemon = True
        deadline.start()
        try:
            super().process_request_thread(request, client_address)
        finally:
            deadline.cancel()
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-answer: a DEBUG line, not socketserver's traceback on stderr."""
        log.debug("http: connection from %s failed", client_address, exc_info=True)


IN_USE_HINT = "another sbd-stream? choose another port, or 0 for any free port"
"""Said after "Address already in use" for an HTTP port (``--metrics-port``, ``--viewer-port``)."""
ZMQ_IN_USE_HINT = "another sbd-stream? choose another port"
"""Said after "Address already in use" for a ZeroMQ endpoint a command binds (``--output``, ``--input``)."""

_held: dict[Hashable, list[socket.socket]] = {}
_answering: dict[socket.socket, _Answering] = {}  # a held socket -> its starting answer (hold_port)
_held_lock = threading.Lock()


def hold_port(key: Hashable, host: str, port: int, answer: str | None = None) -> int:
    """Bind and listen on ``host:port`` now and keep the socket under ``key``; returns the port bound
    (port 0: a free one). Raises ``OSError`` (``EADDRINUSE``: another program holds it). ``answer``
    (``"metrics"`` or ``"viewer"``): serve the starting answer there until the socket is taken
    (:class:`StartingHandler`); None: it only listens (a ZeroMQ endpoint's holder).

    Why: ``serve``, ``demo`` and ``replay`` bound their ports only after the engine had loaded (seconds
    of torch / ONNX Runtime), so a port in use was reported late, after the banner had said "serving".
    Bound up front and kept, a port cannot be taken while the engine loads: a ``BoundedHTTPServer``
    asking for ``key`` adopts the socket (``take_held``), and a ZeroMQ endpoint's holder is dropped just
    before libzmq binds it (``drop_held``). Set up as ``socketserver`` and libzmq do (``SO_REUSEADDR``),
    so a port left in TIME_WAIT by an earlier run is not refused here and then bound fine there."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BoundedHTTPServer.request_queue_size)  # a connection during a hand-over waits here
        answering = None if answer is None else _Answering(host, sock, answer)
    except BaseException:
        sock.close()
        raise
    with _held_lock:
        _held.setdefault(key, []).append(sock)
        if answering is not None:
            _answering[sock] = answering
    return int(sock.getsockname()[1])


def take_held(key: Hashable) -> socket.socket | None:
    """The first socket held under ``key`` (``hold_port``), now the caller's; None if none is. Its
    starting answer has stopped accepting when this returns: what connects next waits in the listen
    backlog for the caller's server, never refused (answers under way still finish)."""
    with _held_lock:
        socks = _held.get(key)
        if not socks:
            return None
        sock = socks.pop(0)
        if not socks:
            del _held[key]
        answering = _answering.pop(sock, None)
    if answering is not None:
        answering.stop()
    return sock


def drop_held(key: Hashable) -> None:
    """Close what is still held under ``key`` (a ZeroMQ socket binds the port next; a command ended)."""
    with _held_lock:
        socks = _held.pop(key, [])
        answers = [_answering.pop(s) for s in socks if s in _answering]
    for answering in answers:
        answering.stop()
    for sock in socks:
        sock.close()


def binds_overlap(a: str, b: str, port: int) -> bool:
    """Whether binding hosts ``a`` and ``b`` on one ``port`` collide: the same address, or one of them
    every address of its family (``0.0.0.0``; ``::``, which on Linux takes IPv4 too). An address that
    does not resolve counts as overlapping (the hint then names the other setting, as before).

    Why: ``cli.service_start.holding_ports`` blamed "the same port as metrics.port" for any earlier
    setting with the same port number, so metrics on 127.0.0.1:P and ``--output tcp://[::1]:P`` held by
    another program read as a clash of the command's own settings (review h34); those binds never
    collide. ``merge`` asks it whether its ``--output`` failed on its own ``--metrics-port``."""

    def resolved(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:  # as bind() resolves it: "" is every address, "localhost" 127.0.0.1
            info = socket.getaddrinfo(host or None, port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
            return ipaddress.ip_address(str(info[0][4][0]).partition("%")[0])
        except (OSError, ValueError):
            return None

    x, y = resolved(a), resolved(b)
    if x is None or y is None or x == y:
        return True
    if x.version == y.version:
        return x.is_unspecified or y.is_unspecified
    return (x if x.version == 6 else y).is_unspecified


def _cut(request: socket.socket) -> None:
    """End a connection past its deadline: its handler's blocked read or write returns at once."""
    with contextlib.suppress(OSError):  # already closed: the handler finished just now
        request.shutdown(socket.SHUT_RDWR)


def _is_loopback_name(host: str) -> bool:
    """``localhost`` (and ``*.localhost``, which browsers resolve to loopback themselves) or a loopback
    address literal; a trailing dot and IPv6 brackets are allowed."""
    host = host.strip().rstrip(".").lower().strip("[]")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_allowed(bound_host: str, host_header: str | None) -> bool:
    """Whether a server bound on ``bound_host`` answers a request whose ``Host`` header is
    ``host_header`` (None: no header, as HTTP/1.0 clients send).

    A server on loopback can only be reached from this machine, so a ``Host`` naming anything but
    loopback there comes from a browser whose page re-pointed its own name at 127.0.0.1 (DNS
    rebinding): refused. A server bound beyond loopback was exposed on purpose under names this
    process cannot know, so it answers any ``Host``. The port is not compared: an SSH tunnel
    (``ssh -L 9000:127.0.0.1:8090``) changes it."""
    if not _is_loopback_name(bound_host):
        return True
    if host_header is None:
        return True
    name = host_header.strip()
    if name.startswith("["):
        name = name.split("]", 1)[0] + "]"
    elif name.count(":") == 1:
        name = name.rsplit(":", 1)[0]
    return _is_loopback_name(name)


class LoopbackHostHandler(http.server.BaseHTTPRequestHandler):
    """A request handler that answers 421 (Misdirected Request) to a ``Host`` that
    :func:`host_allowed` refuses, before any ``do_*`` method runs."""

    head_only = False  # a HEAD request: ``send_body`` writes nothing

    def do_HEAD(self) -> None:
        """HEAD is GET without its body (RFC 9110, 9.3.2): uptime monitors ask with it (``wget --spider``,
        ``curl -I``, many load-balancer checks) and read http.server's default 501 as "down"."""
        do_get = getattr(self, "do_GET", None)
        if do_get is None:
            self.send_error(501, "Unsupported method ('HEAD')")
            return
        do_get()

    def send_body(self, body: bytes) -> None:
        """The response body, unless the request was HEAD (its Content-Length is still the GET's)."""
        if not self.head_only:
            self.wfile.write(body)

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        self.head_only = self.command == "HEAD"  # per request: a kept-alive connection reuses the handler
        bound = str(getattr(self.server, "server_address", ("",))[0])
        if not host_allowed(bound, self.headers.get("Host")):
            log.debug("http: refused Host %r from %s", self.headers.get("Host"), self.client_address)
            self.send_error(421, "Host not allowed", "this server answers only requests for localhost")
            return False
        return True


def raise_fd_limit() -> int | None:
    """Raise the soft limit on open files to the hard one; returns the soft limit now (None: unknown).

    systemd's default soft limit is 1024 and every recording file, socket and HTTP connection takes a
    descriptor; deploy/sbd-stream.service also sets ``LimitNOFILE``. Failing to raise it is not an
    error: the service runs with what it has.
    """
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = 65536 if hard == resource.RLIM_INFINITY else hard  # unlimited: the kernel caps it anyway
        if soft != resource.RLIM_INFINITY and target > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (OSError, ValueError) as e:
        log.debug("open file limit left as it is: %s", e)
        return None
    log.debug("open file limit (RLIMIT_NOFILE, soft): %s", soft)
    return int(soft)


def url_host(host: str) -> str:
    """``host`` as it goes in a URL or a message: ``""`` (every interface) as ``0.0.0.0``, IPv6 in
    brackets. ``http://:::9105`` and "binds , which ..." were printed before."""
    if host == "":
        return "0.0.0.0"
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


def local_url(host: str, port: int) -> str:
    """``http://HOST:PORT`` where a client on this machine reaches a server bound on ``host``: a
    wildcard (``0.0.0.0``, ``""``, ``::``) by loopback, any other host as given (IPv6 in brackets)."""
    shown = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://{url_host(shown)}:{port}"


@dataclass
class Starting:
    """What a held port answers while the service starts (:func:`set_starting`)."""

    doing: str = "loading the engine"
    """In words, for ``/healthz``, the viewer's page and ``info --service``."""
    metrics_text: bytes = b""
    """The Prometheus text ``/metrics`` serves meanwhile (``metric_names.starting_text``)."""
    since: float = field(default_factory=time.monotonic)


_starting = Starting()


def set_starting(doing: str | None = None, metrics_text: bytes | None = None) -> Starting:
    """Change what the held ports answer while the service starts (``cli.service_start``); returns it."""
    global _starting
    with _held_lock:
        old = _starting
        _starting = Starting(
            old.doing if doing is None else doing,
            old.metrics_text if metrics_text is None else metrics_text,
            old.since,
        )
        return _starting


class StartingHandler(LoopbackHostHandler):
    """The answer of a port held while the engine loads: at once, never a wait.

    ``kind`` "metrics": ``/healthz`` 503 with ``"starting": true`` and what is being done (a readiness
    or startup probe reads "not yet"), ``/metrics`` and ``/`` 200 with ``sbd_starting 1`` and the
    build info; "viewer": 503 and a page that says so and reloads itself. HEAD as GET, without a body;
    a ``Host`` other than loopback on a loopback server: 421, as the real servers."""

    server_version = "sbd-stream-starting"
    kind = "metrics"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http (starting): " + format, *args)

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if code == 503:
            self.send_header("Retry-After", "5")
        self.end_headers()
        self.send_body(body)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        st = _starting  # set_starting replaces it whole
        doing = f"starting ({st.doing})"
        state = {
            "ok": False,
            "starting": True,
            "doing": st.doing,
            "starting_s": round(time.monotonic() - st.since, 1),
        }
        try:
            if self.kind == "metrics" and path == "/healthz":
                body = {**state, "failure": None, "stages": {}, "quarantine": []}
                self._send(503, json.dumps(body).encode(), "application/json")
            elif self.kind == "metrics" and path in ("/metrics", "/"):
                self._send(200, st.metrics_text, "text/plain; version=0.0.4; charset=utf-8")
            elif self.kind == "metrics":
                self._send(404, b"not found", "text/plain")
            elif path in ("/", "/index.html"):
                page = "<!doctype html><meta http-equiv=refresh content=2><title>sbd-stream</title><p>"
                self._send(503, (page + html.escape(doing)).encode(), "text/html; charset=utf-8")
            elif path == "/api/status":
                self._send(503, json.dumps(state).encode(), "application/json")
            else:
                self._send(503, doing.encode(), "text/plain; charset=utf-8")
        except (BrokenPipeError, ConnectionResetError):
            pass


class _Answering:
    """A held socket's starting answer: a ``BoundedHTTPServer`` on it, in a daemon thread, until
    ``stop`` (which leaves the socket open and listening for the server that takes it over)."""

    def __init__(self, host: str, sock: socket.socket, kind: str) -> None:
        handler = type(f"Starting_{kind}", (StartingHandler,), {"kind": kind})
        self.httpd = BoundedHTTPServer((host, 0), handler, sock=sock)
        self._lock = threading.Lock()  # a stop before the loop first ran: the loop never starts
        self._stopped = self._running = False
        threading.Thread(target=self._run, name=f"sbd-starting-{kind}", daemon=True).start()

    def _run(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._running = True
        self.httpd.serve_forever(poll_interval=0.05)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            running = self._running
        if running:
            self.httpd.shutdown()  # returns once the loop has stopped accepting
