"""Stopping a long command on SIGINT (Ctrl-C) or SIGTERM: one line saying what stopped and how to go on.

Why: typer turns a ``KeyboardInterrupt`` into a silent exit 130, and SIGTERM (the end of a GPU lease,
``kill``, a batch system) killed ``sbd-train`` at once with nothing said; a training run lost every step
since its last validation (audit 24). Now a training loop takes either signal as a request: it ends the
step it is in, writes ``last.pt`` and raises :class:`Interrupted`, which ``sbd-train`` prints as
``interrupted: ...`` with exit status 128 + the signal (130, 143). Outside the loop
(:func:`stops_raise`, around every ``sbd-train`` command) SIGTERM raises the same exception as Ctrl-C.

A signal ignored when the process started (``nohup`` ignores SIGHUP, a background job of a
non-interactive shell SIGINT) stays ignored: that is what the caller asked for.

A raise from a signal handler lands in whatever Python frame runs when the signal arrives; when that is a
weakref callback, a ``__del__`` or a GC callback, Python prints "Exception ignored in ..." and drops it:
the stop is lost and the command runs on to its end (``sbd-train simulate`` lost a SIGTERM that way,
session 35). So :func:`stops_raise` also records the signal (``sbd_stream.stop_pending``), and the long
loops call :func:`check_stop` between items: it raises the recorded stop there, once, if the first raise did
not unwind. A :class:`StopRequest` entered after such a lost stop starts with it set (a training run
whose stop was swallowed while its data were read stops after its first step, ``last.pt`` written).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from sbd_stream.stop_pending import PendingStop, check_stop, pending_signal, recorded_stops

__all__ = [
    "STOP_SIGNALS",
    "Interrupted",
    "PendingStop",
    "StopRequest",
    "check_stop",
    "pending_signal",
    "stops_raise",
]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A command stopped by a signal; ``line`` says what was stopped and how to go on (may be empty).

    A ``KeyboardInterrupt``, so nothing that catches ``Exception`` (the GPU recipe's steps, a simulation's
    per-task handler) takes it for a failure of its own and goes on."""

    def __init__(self, signum: int, line: str = "") -> None:
        super().__init__(line)
        self.signum = signum
        self.line = line

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def stops_raise(signals: tuple[int, ...] = STOP_SIGNALS) -> Iterator[None]:
    """While inside: ``signals`` (SIGINT and SIGTERM) raise :class:`Interrupted` (a ``KeyboardInterrupt``),
    so ``finally`` blocks run and the command can say what it stopped, and each is recorded for
    :func:`check_stop` (``sbd_stream.stop_pending``: nested blocks share the outermost one's record).
    Only in the main thread; a signal ignored by the caller stays ignored."""
    with recorded_stops(signals, Interrupted):
        yield


class StopRequest:
    """While inside ``with StopRequest() as stop``: SIGINT and SIGTERM only set ``stop.signum``; the
    loop polls it between steps, so a checkpoint is written from a consistent state (not from inside
    an optimizer step). Outside the main thread (a test runner's worker thread) it installs nothing.
    It starts set by a stop an enclosing :func:`stops_raise` recorded but whose raise was swallowed."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.signum = self.signum or signum

    def __enter__(self) -> StopRequest:
        self.signum = pending_signal()  # a stop swallowed before the loop began: the loop's first check
        if _in_main_thread():
            for sig in STOP_SIGNALS:
                if signal.getsignal(sig) != signal.SIG_IGN:
                    self._old[sig] = signal.signal(sig, self._note)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, signal.SIG_DFL if old is None else old)
        self._old = {}
