"""Log lines for events that can come by the thousand: the first of each cause, then a summary a minute.

Why: an unauthenticated peer dialling a CURVE input again and again wrote one WARNING per failed
handshake, 8,328 lines in seconds, burying everything else in the log (and filling the disk under
``journald``). The counters (``sbd_input_disconnects_total`` ...) still count every event; the log says
that it happens and how often: the first event of each cause at its level, the next ones at DEBUG,
and at most one summary line per ``every_s`` ("N more ... since HH:MM:SS").

A leaf (standard library only), for any stage that logs per event.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

__all__ = ["EVERY_S", "RateLimitedLog"]

EVERY_S = 60.0
"""Seconds between two summary lines of one cause."""


@dataclass
class _Cause:
    level: int  # the level of the first line and of the summaries
    what: str  # the events' name in the summary ("handshake failures")
    last_line: float  # monotonic time of the first line or the last summary
    held: int = 0  # events logged at DEBUG since then
    since: float = 0.0  # wall-clock time of the first of them


class RateLimitedLog:
    """Per-cause rate limit on one logger; thread-safe.

    ``log`` for every event; ``tick`` now and then (a poll loop), so that a burst that stopped is
    still summed up within ``every_s``; ``tick(force=True)`` when closing.
    """

    def __init__(self, logger: logging.Logger, every_s: float = EVERY_S) -> None:
        self.logger, self.every_s = logger, every_s
        self._causes: dict[str, _Cause] = {}
        self._lock = threading.Lock()

    def log(
        self, cause: str, level: int, what: str, msg: str, *args: object, now: float | None = None
    ) -> None:
        """``msg % args`` at ``level`` the first time ``cause`` happens, later at DEBUG (summed up by
        ``tick``); ``what`` names the events of this cause in the summary."""
        now = time.monotonic() if now is None else now
        with self._lock:
            c = self._causes.get(cause)
            if c is None:
                self._causes[cause] = _Cause(level, what, now)
            else:
                if c.held == 0:
                    c.since = time.time()
                c.held += 1
        self.logger.log(level if c is None else logging.DEBUG, msg, *args)
        if c is not None:
            self.tick(now)

    def tick(self, now: float | None = None, force: bool = False) -> None:
        """One summary line per cause whose events were held back and whose last line is ``every_s``
        old (any age with ``force``)."""
        now = time.monotonic() if now is None else now
        due = []
        with self._lock:
            for c in self._causes.values():
                if c.held and (force or now - c.last_line >= self.every_s):
                    due.append((c.level, c.held, c.what, c.since))
                    c.held, c.last_line = 0, now
        for level, held, what, since in due:
            stamp = time.strftime("%H:%M:%S", time.localtime(since))
            self.logger.log(level, "%d more %s since %s (each logged at DEBUG)", held, what, stamp)
