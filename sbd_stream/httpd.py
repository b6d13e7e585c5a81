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

A leaf (standard library only), so ``metrics`` and the viewer can both use it.
"""

from __future__ import annotations

import contextlib
import http.server
import ipaddress
import logging
import socket
import threading
from collections.abc import Hashable
from typing import Any

__all__ = [
    "IN_USE_HINT",
    "MAX_CONNECTIONS",
    "TIMEOUT_S",
    "ZMQ_IN_USE_HINT",
    "BoundedHTTPServer",
    "LoopbackHostHandler",
    "binds_overlap",
    "drop_held",
    "hold_port",
    "host_allowed",
    "raise_fd_limit",
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
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.max_connections, self.timeout_s = max_connections, timeout_s
        self._slots = threading.BoundedSemaphore(max_connections)
        self.refused = 0  # connections closed at once because every slot was taken
        held = take_held(("http", address[0], address[1]))  # bound before the engine loaded (hold_port)
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
_held_lock = threading.Lock()


def hold_port(key: Hashable, host: str, port: int) -> int:
    """Bind and listen on ``host:port`` now and keep the socket under ``key``; returns the port bound
    (port 0: a free one). Raises ``OSError`` (``EADDRINUSE``: another program holds it).

    Why: ``serve``, ``demo`` and ``replay`` bind their ports only after the engine has loaded (seconds
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
        sock.listen(BoundedHTTPServer.request_queue_size)  # a scrape while the engine loads waits here
    except BaseException:
        sock.close()
        raise
    with _held_lock:
        _held.setdefault(key, []).append(sock)
    return int(sock.getsockname()[1])


def take_held(key: Hashable) -> socket.socket | None:
    """The first socket held under ``key`` (``hold_port``), now the caller's; None if none is."""
    with _held_lock:
        socks = _held.get(key)
        if not socks:
            return None
        sock = socks.pop(0)
        if not socks:
            del _held[key]
        return sock


def drop_held(key: Hashable) -> None:
    """Close what is still held under ``key`` (a ZeroMQ socket binds the port next; a command ended)."""
    with _held_lock:
        socks = _held.pop(key, [])
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
