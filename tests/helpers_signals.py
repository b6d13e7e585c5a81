"""A stop signal whose raise Python swallows, made on purpose (the tests of ``sbd_stream.stop_pending``).

A signal handler runs in whatever Python frame is executing when the signal arrives; inside a weakref
callback Python prints "Exception ignored in ..." and drops what the handler raised. ``raise_signal``
runs the handler at once, so raising the signal inside a real weakref callback reproduces that case
deterministically (the CI run that lost a SIGTERM in ``WeakValueDictionary.remove``, session 35).
"""

from __future__ import annotations

import signal
import weakref


class Thing:
    """An object a weakref can point at (``object()`` cannot be weakly referenced)."""


def signal_inside_a_weakref_callback(sig: int) -> None:
    """``sig`` delivered while a weakref callback runs in this (the main) thread."""
    thing = Thing()
    ref = weakref.ref(thing, lambda _: signal.raise_signal(sig))
    del thing  # the callback runs here
    assert ref() is None


def stop_signals_at_their_defaults() -> None:
    """SIGINT and SIGTERM as a terminal's process has them: a suite started as ``cmd &`` inherits SIGINT
    ignored, and the stop blocks rightly leave an ignored signal ignored (conftest restores them after)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
