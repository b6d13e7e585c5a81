"""Ctrl-C or SIGTERM during ``sbd-train simulate``: one line saying what is kept, and no Dask chatter.

Why (audit 24): a Ctrl-C ended the command with exit 130 and, instead of a line, Dask's shutdown noise:
each worker cancelled its running task with "Async instruction ... ended with CancelledError", and the
nanny waited 4 s for workers still inside abTEM ("Worker process still alive after 4.0 seconds,
killing"); SIGTERM killed it silently (143) with a "leaked semaphore" warning. Now either signal
silences Dask's loggers here, kills the local worker processes (their tasks are lost either way:
only committed tasks are in the file, written by this process) and raises ``Interrupted``, so the
simulation's own clean-up runs and the command ends with ``interrupted: ...`` and 130 / 143.

A raise from a signal handler lands in whatever Python frame runs when the signal arrives. When that is a
weakref callback or a ``__del__`` (h5py and distributed drop objects all the time), Python prints
"Exception ignored in ..." and drops it: the stop was lost and the simulation ran to its end (a CI run
under load). So the handler also records the signal, and the simulation's loop calls the ``check`` this
context hands out between tasks: it raises the recorded stop there, once, if the first raise did not
unwind. Python's "Exception ignored" report of that swallowed raise (a traceback on stderr, where the
user expects one line) is left out while inside; any other unraisable exception is reported as before.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from sbd_stream.stop_pending import PendingStop
from training.train.stop import STOP_SIGNALS, Interrupted


def quiet_dask() -> None:
    """Dask's loggers of this process to CRITICAL, and its local worker processes ended at once."""
    for name in list(logging.Logger.manager.loggerDict):
        if name.split(".")[0] in ("distributed", "tornado"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    for handler in logging.getLogger("distributed").handlers:
        handler.setLevel(logging.CRITICAL)
    for child in multiprocessing.active_children():  # the LocalCluster's workers (spawned processes)
        child.kill()


def committed(out: Path) -> str:
    """What ``out`` holds now, in words (the file's own ``committed`` counters)."""
    try:
        import h5py

        with h5py.File(out, "r") as f:
            n_img, _, n_task = (int(v) for v in f["committed"][()])
    except (OSError, KeyError, ValueError):
        return "the tasks committed so far are kept"
    return f"{n_task} tasks ({n_img} images) committed"


def _never() -> None:
    """``check`` where no handler is installed (outside the main thread)."""


@contextmanager
def simulation_stops(out: Path) -> Iterator[Callable[[], None]]:
    """While inside: SIGINT and SIGTERM quiet Dask and raise ``Interrupted`` with the line for ``out``.

    Yields the ``check`` to call between tasks (see the module's docstring)."""
    if threading.current_thread() is not threading.main_thread():
        yield _never
        return
    pending = PendingStop(Interrupted)  # its own record: this handler also quiets Dask

    def _stop(signum: int, frame: FrameType | None) -> None:
        pending.note(signum)  # first: a raise swallowed in a weakref callback leaves this behind
        quiet_dask()
        raise Interrupted(signum)

    report = sys.unraisablehook

    def _unraisable(u: sys.UnraisableHookArgs) -> None:
        if not isinstance(u.exc_value, Interrupted):  # ours is recorded in ``pending``: said once, later
            report(u)

    old = {s: signal.getsignal(s) for s in STOP_SIGNALS if signal.getsignal(s) != signal.SIG_IGN}
    sys.unraisablehook = _unraisable
    for s in old:
        signal.signal(s, _stop)
    try:
        yield pending.check
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        raise Interrupted(
            signum,
            f"simulation into {out} stopped by {signal.Signals(signum).name}: {committed(out)}; "
            "rerun the same command to resume",
        ) from None
    finally:
        pending.close()
        sys.unraisablehook = report
        for s, handler in old.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
