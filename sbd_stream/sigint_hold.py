"""Ctrl-C held back while native libraries import: taken after the import, as one KeyboardInterrupt.

Why: Python's own Ctrl-C handler raises KeyboardInterrupt in whatever Python code runs next, and while
torch imports, that code is often called from C++ through pybind11. The exception then crosses a C++
frame that cannot carry it and the process is aborted: "terminate called after throwing an instance of
'pybind11::error_already_set' ... KeyboardInterrupt", status -6 (SIGABRT), no "interrupted" line and no
exit status 130 (``sbd-train export --help`` in CI, one Ctrl-C in a suite of several; the signal landed
0.2 s after torch's library was mapped). A handler that only notes the signal never raises inside those
frames; the interrupt is raised here once the imports are done, where the console entries turn it into
"interrupted" and 130.

Standard library only: the console entries import this before anything heavy.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def sigint_held() -> Iterator[None]:
    """Within the block a Ctrl-C is noted, not raised; after it, one KeyboardInterrupt if any came.

    Only where Python's own Ctrl-C handler is in place, on the main thread (the only one that may set
    handlers): a Ctrl-C ignored by the parent (``nohup``, ``cmd &`` in a script) stays ignored, and a
    handler a caller installed (a command's clean stop) is left alone. An exception from the block
    itself goes on as it is, and a held interrupt is then dropped.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    got: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: got.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if got:
        raise KeyboardInterrupt
