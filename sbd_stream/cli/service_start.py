"""What `serve` checks and prepares before and while it starts: key files, descriptors, the banner.

Kept out of ``live.py`` (the commands) so each check is one function with one job: a CURVE key that
cannot work ends the command in one line (exit 2) before the engine loads, and again if the service
itself meets one while opening its sockets; the open-file limit is raised once, here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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
