"""Stop signals that raise, recorded too: a raise Python swallowed is raised again at a loop's next check.

Why: a raise from a signal handler (Python's own ``KeyboardInterrupt`` for Ctrl-C, or a command's own
exception for SIGTERM) lands in whatever Python frame runs when the signal arrives. When that frame is a
weakref callback, a ``__del__`` or a GC callback (h5py, torch and Dask drop objects all the time), Python
prints "Exception ignored in ..." and drops the exception: the stop is lost and a long command runs on to
its end (``sbd-train simulate`` ran to its end after a SIGTERM that way, session 35). Inside
:func:`recorded_stops` the handler notes the signal before it raises, and a long loop calls
:func:`check_stop` between its items: reaching it with a signal noted means the raise did not unwind,
and it is raised there, once.

Loops that only poll a flag (``service.offline_results.StopFlag``, ``cli.app.on_signals``,
``training.train.stop.StopRequest``) never raise from a handler and need none of this; one installed inside
a block takes over a stop the block recorded (:func:`take_pending`) and keeps its own handlers to the end
(a block leaves a handler that is no longer its own in place, and so never re-arms the raise behind it).

Standard library only (a leaf): ``training`` uses it for every ``sbd-train`` command.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

RaiseAs = Callable[[int], BaseException]
"""The exception a stop signal raises, made from its number."""


class PendingStop:
    """The signals a handler has raised; ``check`` raises the first again where it is safe to.

    ``check`` is called by a loop between its items: reaching it after a signal means the handler's own
    raise was swallowed (an unwound raise never comes back to the loop)."""

    def __init__(self, raise_as: RaiseAs) -> None:
        self.signums: list[int] = []
        self._raise_as = raise_as
        self._raise_as_of: dict[int, RaiseAs] = {}  # an inner block's own exception for its signals
        self._raised = False

    @property
    def signum(self) -> int | None:
        """The first signal noted and not raised again yet (None: nothing pending)."""
        return self.signums[0] if self.signums and not self._raised else None

    def note(self, signum: int, raise_as: RaiseAs | None = None) -> None:
        """``raise_as``: the exception of the block whose handler noted it (nested blocks share one
        record: ``sbd-stream export``'s SIGTERM inside the CLI's Ctrl-C block is raised as its own)."""
        self.signums.append(signum)
        if raise_as is not None:
            self._raise_as_of.setdefault(signum, raise_as)

    def check(self) -> None:
        signum = self.signum
        if signum is not None:
            self.close()
            raise self._raise_as_of.get(signum, self._raise_as)(signum)

    def close(self) -> None:
        """Quiet from now on: the stop has unwound (from the handler or from ``check``)."""
        self._raised = True


_PENDING: list[PendingStop] = []
"""The record of the outermost :func:`recorded_stops` block the main thread is inside (none outside)."""


def check_stop() -> None:
    """Raise a stop whose handler's raise was swallowed (module docstring); nothing otherwise, and nothing
    outside :func:`recorded_stops`. Cheap: call it once per item of a loop."""
    for pending in _PENDING:
        pending.check()


def take_pending() -> int | None:
    """The signal of a stop that was swallowed, handed over to the caller (a flag-polling stop, as
    ``cli.app.on_signals``), which now answers it: :func:`check_stop` raises it no more. None: nothing
    pending."""
    signum = pending_signal()
    if signum is not None:
        for pending in _PENDING:
            pending.close()
    return signum


def pending_signal() -> int | None:
    """The signal of a stop that was swallowed and not raised again yet, if any (a flag-polling loop
    that starts inside a block takes it as its own request)."""
    return next((p.signum for p in _PENDING if p.signum is not None), None)


@contextmanager
def recorded_stops(signals: tuple[int, ...], raise_as: RaiseAs) -> Iterator[None]:
    """While inside: each of ``signals`` raises ``raise_as(signum)`` and is recorded for
    :func:`check_stop`. Only in the main thread (the only one that may set handlers); a signal the
    caller ignores (``nohup``) stays ignored; the handlers from before are back afterwards, but for
    one that is no longer this block's (a stop that took over, ``cli.app.on_signals``: left in place).

    Nested (every ``sbd-train`` command runs inside one for SIGINT; ``train`` adds SIGTERM), the inner
    block records into the outer one's record, which outlives it: a stop swallowed inside is still raised
    by a ``check_stop`` after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    outermost = not _PENDING
    pending = PendingStop(raise_as) if outermost else _PENDING[0]

    def _raise(signum: int, frame: FrameType | None) -> None:
        pending.note(signum, raise_as)  # first: a raise swallowed in a weakref callback leaves this behind
        raise raise_as(signum)

    old = {s: signal.getsignal(s) for s in signals if signal.getsignal(s) != signal.SIG_IGN}
    for s in old:
        signal.signal(s, _raise)
    if outermost:
        _PENDING.append(pending)
    try:
        yield
    finally:
        if outermost:
            pending.close()
            _PENDING.remove(pending)
        for s, handler in old.items():
            if signal.getsignal(s) is _raise:  # not one a flag-polling stop took over (module docstring)
                signal.signal(s, signal.SIG_DFL if handler is None else handler)


@contextmanager
def ctrl_c_recorded() -> Iterator[None]:
    """Ctrl-C raises ``KeyboardInterrupt`` as Python's own handler does, and is recorded: ``recorded_stops``.

    Why: ``sbd-stream serve`` / ``demo`` / ``replay`` / ``merge`` load their engine before their stop
    handler (``cli.app.on_signals``) is in place; a Ctrl-C there whose raise Python swallowed (a weakref
    callback of the load's) was lost and the service ran on until the next one. Recorded, the stop
    handler takes it over when it installs (:func:`take_pending`) and the command stops at once, by its
    usual stop path. Only where Python's own handler is in place (not ``nohup``'s ignore, not a
    caller's handler)."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    with recorded_stops((signal.SIGINT,), lambda _signum: KeyboardInterrupt()):
        yield
