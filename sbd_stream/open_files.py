"""Open descriptors against the open-file limit: two gauges and one warning when they come close.

Why: near its open-file limit (RLIMIT_NOFILE) the process cannot accept one more connection, and a
bound ZeroMQ input refuses its peers inside libzmq (``accept()`` fails with EMFILE) without a counter
or a line. Counting those failures with zmq's socket monitor (``EVENT_ACCEPT_FAILED``) was tried and
reverted: at the limit libzmq retries the accept as fast as it can, the monitor's pipe fills, libzmq's
I/O thread blocks and closing the monitor deadlocks. So the descriptors are counted instead, a few
syscalls each time: at every scrape of ``/metrics`` (a collector) and at every status line of ``serve``
(every 2 s), so the warning comes without a scraper too.

The warning is logged once when the count exceeds ``WARN_AT`` of the soft limit, and again only after
it has dropped back under ``REARM_AT`` (hysteresis): a service that stays near its limit must not write
a line every two seconds. Linux only (``/proc/self/fd``); elsewhere the gauges are absent.

A leaf (standard library and prometheus_client), so ``metrics`` can register it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["REARM_AT", "WARN_AT", "OpenFilesCheck", "open_descriptors", "should_warn", "soft_limit"]

log = logging.getLogger(__name__)

WARN_AT = 0.9
"""Fraction of the soft limit over which open descriptors are warned about."""
REARM_AT = 0.8
"""Fraction of the soft limit the count must drop under before a next warning can be logged."""

_FD_DIR = "/proc/self/fd"
_OPEN_HELP = "File descriptors the process has open (Linux: /proc/self/fd)"
_LIMIT_HELP = "The process's open-file limit (RLIMIT_NOFILE, soft; ulimit -n)"


def open_descriptors() -> int | None:
    """Descriptors open in this process; None where ``/proc/self/fd`` cannot be read (not Linux).

    The listing's own descriptor (the directory being read) is not counted.
    """
    try:
        return max(0, len(os.listdir(_FD_DIR)) - 1)
    except OSError:
        return None


def soft_limit() -> int | None:
    """The soft RLIMIT_NOFILE; None where unknown (not POSIX) or unlimited."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    try:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (OSError, ValueError):
        return None
    return None if soft == resource.RLIM_INFINITY or soft <= 0 else int(soft)


def should_warn(warned: bool, n_open: int, limit: int) -> tuple[bool, bool]:
    """One check of the hysteresis: ``(warn now, warned after)``.

    ``warned`` says a warning was logged and the count has not yet dropped under ``REARM_AT`` since:
    over ``WARN_AT`` of ``limit`` warns only when not ``warned``; under ``REARM_AT`` re-arms; between
    the two the state is kept, so a count that wavers around 90 % is one line, not one a check.
    """
    if n_open > WARN_AT * limit:
        return (not warned, True)
    if n_open < REARM_AT * limit:
        return (False, False)
    return (False, warned)


def warning_text(n_open: int, limit: int) -> str:
    """The warning's line: both numbers, what goes wrong, and how to raise the limit."""
    return (
        f"{n_open} files open of the open-file limit {limit} (RLIMIT_NOFILE, soft; over "
        f"{WARN_AT:.0%}): new connections to bound inputs, subscribers and /metrics may be refused "
        f"silently (libzmq logs nothing) and recordings may fail to open; raise the limit with "
        f"`ulimit -n 65536` before starting, or LimitNOFILE=65536 in the systemd unit "
        f"(sbd_open_files, sbd_open_files_limit)"
    )


class OpenFilesCheck(Collector):
    """``sbd_open_files`` and ``sbd_open_files_limit``, read at each scrape; ``check`` logs the warning.

    Thread-safe: scrapes (one thread per HTTP connection) and the status line may check at once; the
    hysteresis state is changed under a lock, so two checks cannot both log the same crossing.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._warned = False

    def check(self) -> tuple[int | None, int | None]:
        """Count, compare, warn (once per crossing); returns ``(open, limit)`` (None: unknown)."""
        n_open, limit = open_descriptors(), soft_limit()
        if n_open is None or limit is None:
            return n_open, limit
        with self._lock:
            warn, warned = should_warn(self._warned, n_open, limit)
            recovered, self._warned = self._warned and not warned, warned
        if warn:
            log.warning("%s", warning_text(n_open, limit))
        elif recovered:
            log.info("open files down to %d of the limit %d (under %.0f%%)", n_open, limit, 100 * REARM_AT)
        return n_open, limit

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The names without reading anything (registration calls this, not ``collect``)."""
        yield GaugeMetricFamily("sbd_open_files", _OPEN_HELP)
        yield GaugeMetricFamily("sbd_open_files_limit", _LIMIT_HELP)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        n_open, limit = self.check()
        if n_open is not None:
            yield GaugeMetricFamily("sbd_open_files", _OPEN_HELP, value=n_open)
        if limit is not None:
            yield GaugeMetricFamily("sbd_open_files_limit", _LIMIT_HELP, value=limit)
