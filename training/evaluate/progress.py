"""Progress lines of the evaluation commands: on stderr, one whole line each, flushed at once.

Why: ``sbd-train evaluate`` (Table 5.1) and its siblings run for minutes to an hour, and with their output
in a file or a pipe they printed nothing until the end (the table rows went to a block-buffered stdout,
and nothing at all was said while a method ran): a tiny run under load spent 7 minutes with an empty
log, and its user could not tell whether it was alive. These lines need no terminal, so a log file
shows which method runs, how far it is and how long each took; stdout keeps only the table rows and the
``wrote ...`` lines, as before.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from sbd_stream.stop_pending import check_stop

T = TypeVar("T")

STEPS = 10
"""At most this many intermediate ``k/n`` lines per method: enough to see it move, few enough to read."""
QUIET_S = 5.0
"""No ``k/n`` line sooner than this after the previous line: a method done in seconds gets two lines."""


def progress(msg: str) -> None:
    """One line to stderr, dropped where stderr cannot take it (``2>/dev/full``, closed, ``2>&-``):
    a progress line must never end an evaluation that would succeed (as ``sbd-train simulate``)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        print(msg, file=sys.stderr, flush=True)


def tracked(items: Iterable[T], label: str, what: str, total: int | None = None) -> Iterator[T]:
    """``items``, saying ``label: started on N what`` before the first, ``k/N`` every ~N/10 items (when
    ``QUIET_S`` passed since the last line) and ``label: done, N what in S s`` after the last (a
    generator: the lines come as the work goes). Before each item it calls ``check_stop``: a stop signal
    whose raise Python swallowed (in a weakref callback, a ``__del__``) ends the evaluation there."""
    if total is None:
        items = list(items)
        total = len(items)
    every = max(1, -(-total // STEPS))
    t0 = last = time.perf_counter()
    progress(f"{label}: started on {total} {what}")
    n = 0
    for item in items:
        check_stop()  # a Ctrl-C / SIGTERM whose raise Python swallowed: stop here (training.train.stop)
        yield item
        n += 1
        now = time.perf_counter()
        if n < total and n % every == 0 and now - last >= QUIET_S:
            progress(f"{label}: {n}/{total} {what}, {now - t0:.0f} s")
            last = now
    progress(f"{label}: done, {n} {what} in {time.perf_counter() - t0:.1f} s")
