"""What `serve` checks and prepares before and while it starts: key files, descriptors, the banner.

Kept out of ``live.py`` (the commands) so each check is one function with one job: a CURVE key that
cannot work ends the command in one line (exit 2) before the engine loads, and again if the service
itself meets one while opening its sockets; the open-file limit is raised once, here.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING

from sbd_stream.cli.app import fail
from sbd_stream.cli.options import Flags, endpoints_named

if TYPE_CHECKING:
    from sbd_stream.config import ServiceSettings


def check_curve_keys(s: ServiceSettings) -> None:
    """Read every CURVE key file the settings name, before anything starts: the pair, the server's
    key and each ``*.key`` in ``authorized_keys_dir`` (a malformed client key there was a traceback
    from the publisher's set-up); a missing, malformed or group/other-writable one is one line."""
    from sbd_stream.security import CurveError, check_curve

    for where, curve in (("ingest.curve", s.ingest.curve), ("publish.curve", s.publish.curve)):
        try:
            check_curve(curve)
        except CurveError as e:
            fail(f"{where}: {e}")


@contextmanager
def starting(flags: Flags) -> Iterator[None]:
    """Around the service's start: an endpoint that cannot open (``endpoints_named``) or a CURVE key
    libzmq or the authenticator refuses ends the command in one line, exit 2, never a traceback."""
    from sbd_stream.security import CurveError

    try:
        with endpoints_named(flags):
            yield
    except CurveError as e:
        fail(f"CURVE: {e}")


@contextmanager
def holding_ports(s: ServiceSettings, receiver: bool = True) -> Iterator[None]:
    """Bind every local port the service will bind, now, before the engine loads, and hold them until it
    binds them itself (``httpd.hold_port``); a port another program holds is an ``EndpointError`` naming
    the setting (``endpoints_named`` names the flag). Leaving the block closes what was not taken over.

    Why: each of ``--output``, ``--input`` (bound), ``--metrics-port`` and ``--viewer-port`` in use was
    found only after seconds of engine load, after the banner had announced the service (audit h34).
    A probe that binds and closes again would race with whoever binds next; the held socket is the
    service's own (HTTP) or kept until libzmq's bind (the publisher and the receiver close it right
    before theirs). Port 0 and ``*`` (any free port) and ZeroMQ hosts that are interface or host names
    are left to the bind itself.

    Held HTTP ports answer meanwhile (``httpd.StartingHandler``: ``/healthz`` 503 "starting (loading
    the engine ...)", ``/metrics`` ``sbd_starting 1``): a probe or scrape waited there with no answer
    for the whole load, minutes with a TensorRT plan build (review h34)."""
    from sbd_stream.config import IngestSettings, PublishSettings, SocketMode
    from sbd_stream.httpd import IN_USE_HINT, ZMQ_IN_USE_HINT, binds_overlap, drop_held, hold_port
    from sbd_stream.service.endpoint_error import EndpointError

    wanted: list[tuple[str, str, tuple[object, ...], str, int, str]] = []
    if s.metrics.enabled:
        m = s.metrics
        wanted.append(
            ("metrics.port", f"{m.host}:{m.port}", ("http", m.host, m.port), m.host, m.port, IN_USE_HINT)
        )
    if s.viewer.enabled and s.publish.enabled:  # the viewer runs on the service's output (service/build.py)
        v = s.viewer
        wanted.append(
            ("viewer.port", f"{v.host}:{v.port}", ("http", v.host, v.port), v.host, v.port, IN_USE_HINT)
        )
    answers = {"metrics.port": "metrics", "viewer.port": "viewer"}
    zmq_wanted: list[tuple[str, PublishSettings | IngestSettings]] = []
    zmq_wanted += [("publish.endpoint", s.publish)] if s.publish.enabled else []
    zmq_wanted += [("ingest.endpoint", s.ingest)] if receiver else []
    for setting, section in zmq_wanted:
        address = tcp_address(section.endpoint) if section.mode is SocketMode.bind else None
        if address is not None:
            wanted.append((setting, section.endpoint, ("zmq", section.endpoint), *address, ZMQ_IN_USE_HINT))
    with ExitStack() as held:
        name_engine = held.enter_context(starting_note(s))
        for i, (setting, where, key, host, port, hint) in enumerate(wanted):
            try:
                hold_port(key, host, port, answers.get(setting))
            except OSError as e:
                reason = e.strerror or str(e)
                if e.errno == errno.EADDRINUSE:  # by another program, or by this command's own other port
                    mine = [w[0] for w in wanted[:i] if w[4] == port and binds_overlap(w[3], host, port)]
                    hint = f"the same port as {mine[0]}: give each its own" if mine else hint
                    reason = f"{reason} ({hint})"
                raise EndpointError(setting, where, reason, mine[0] if mine else None) from e
            finally:
                held.callback(drop_held, key)
        name_engine()  # the ports are held: the engines' imports may come now
        yield


@contextmanager
def starting_note(s: ServiceSettings) -> Iterator[Callable[[], None]]:
    """What the held ports say the service is doing while it starts (``httpd.set_starting``): the
    engine it loads, and the engines' latest log line at INFO or above while the block runs, such as
    "building TensorRT plan ...; this takes minutes once per GPU".

    Yields ``name_engine``: without ``--model`` the engine is the device's live default
    (``engines.card.live_engine``), known only with torch imported; called once the ports are held
    (``holding_ports``), it names that engine (``sbd-unet3s2-paper-twins`` on a CPU) where the note
    said "(default)" for the whole load (audit h35)."""
    import logging

    from sbd_stream import __version__
    from sbd_stream.httpd import set_starting
    from sbd_stream.metric_names import starting_text

    d = s.denoise
    engine = getattr(d.engine, "value", d.engine)
    where = f"{engine}, device {d.device or 'auto'}"
    what = [f"loading the engine {d.model or '(the live default of the device)'}: {where}"]
    set_starting(what[0], starting_text(__version__))

    def name_engine() -> None:
        if d.model:
            return
        from sbd_stream.engines.card import live_engine  # torch: imported by the engine's load next

        devices: list[str | None] = list(d.devices) if d.devices else [d.device]  # as load_stages plans
        names = dict.fromkeys(live_engine(device) for device in devices)
        what[0] = f"loading the engine {', '.join(names)}: {where}"
        set_starting(what[0])

    class Note(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            set_starting(f"{what[0]} (last: {record.getMessage()})")

    note, engines = Note(logging.INFO), logging.getLogger("sbd_stream.engines")
    engines.addHandler(note)
    try:
        yield name_engine
    finally:
        engines.removeHandler(note)


def tcp_address(endpoint: str) -> tuple[str, int] | None:
    """(host, port) a ZeroMQ ``tcp://`` bind endpoint names, for ``hold_port``; None where libzmq alone
    can say: another transport, port ``*`` or 0 (any free one), a host or interface name (``eth0``)."""
    import ipaddress

    scheme, _, address = endpoint.partition("://")
    host, _, port = address.rpartition(":")
    if scheme != "tcp" or not port.isdigit() or not 0 < int(port) <= 65535:  # others: endpoint_problem
        return None
    bare = host.strip("[]")
    if bare == "*":
        return "0.0.0.0", int(port)
    if bare == "localhost":
        return "127.0.0.1", int(port)
    try:
        return str(ipaddress.ip_address(bare)), int(port)
    except ValueError:
        return None


MIN_OPEN_FILES = 64
"""The open-file limit below which ``serve``, ``demo`` and ``merge`` refuse to start.

Measured: ``serve`` with a recording, one subscriber and ``/metrics`` peaks at 35 descriptors (the
engine, ZeroMQ's contexts and sockets, pyzmq's zero-copy bookkeeping socket, the recording file); at
``ulimit -n 32`` the publisher lost every frame from the sixth on ("Too many open files") and the next
acquisition's connection was never made, without a line; at 64 two acquisitions were received,
recorded and published in full. Each more subscriber, worker, recording part, viewer or ``/metrics``
connection takes one more (docs/deployment.md, "File descriptors")."""


def prepare_process(minimum: int = MIN_OPEN_FILES) -> None:
    """Raise the open-file limit to the hard one (``httpd.raise_fd_limit``) and log it: recording
    files, sockets and HTTP connections all take descriptors, and systemd's default soft limit is
    1024. A limit still under ``minimum`` (a hard limit that low) ends the command in one line, exit
    2, before anything starts: the service would run and lose frames and acquisitions."""
    import logging

    from sbd_stream.httpd import raise_fd_limit

    soft = raise_fd_limit()
    if soft is None:  # not POSIX, or not readable: nothing to check
        return
    logging.getLogger("sbd_stream").info("open-file limit (ulimit -n): %d", soft)
    if 0 <= soft < minimum:  # RLIM_INFINITY reads as -1
        fail(
            f"the open-file limit is {soft} (ulimit -n, hard limit included) and the service needs at "
            f"least {minimum}; raise it (ulimit -n 1024, or LimitNOFILE= in a systemd unit)"
        )


def metrics_where(s: ServiceSettings) -> str:
    """The banner's metrics endpoint; a free port (0) is only known once bound, so the log names it then
    (``metrics on http://...``, as the viewer logs its page) instead of the banner printing ``:0``.
    An IPv6 host is bracketed and an empty one (every interface) shown as such: the banner printed
    ``http://:::9105`` and ``http://:9105``."""
    from sbd_stream.httpd import url_host

    if not s.metrics.enabled:
        return "metrics off"
    host = url_host(s.metrics.host)
    if s.metrics.port == 0:
        return f"metrics on a free port of {host} (logged once bound)"
    return f"metrics http://{host}:{s.metrics.port}/metrics"


def output_where(s: ServiceSettings) -> str:
    """The banner's output: ``out off`` with ``publish.enabled = false``, as ``metrics off``, and the mode
    where it dials out. Before (audit h33) the banner named the endpoint with publishing off, where
    nothing was bound and no viewer could ever connect."""
    from sbd_stream.config import SocketMode

    if not s.publish.enabled:
        return "out off"
    mode = " (connect)" if s.publish.mode is SocketMode.connect else ""
    return f"out {s.publish.endpoint}{mode}"
