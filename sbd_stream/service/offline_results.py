"""The client of an offline Dask job waiting for results: in frame order, bounded, stopped by a signal,
ended in one line when its scheduler is refused or lost.

``ordered`` submits chunks and yields their results in frame order. Ctrl-C and SIGTERM stop it
between results, keeping the partial for a resume.

Why not the default ``KeyboardInterrupt``: it is raised wherever the main thread happens to be, and
while the client waits on Dask that is often inside a weakref callback or a finalizer, where Python
prints "Exception ignored in: ..." and carries on: the job ran to its end with status 0. So the job
installs handlers that only set a flag (``StopFlag``), the client polls it between results, writes
and flushes every chunk already in order, leaves ``OUT.partial`` and its sidecar, and ends with exit
status 130 (SIGINT) or 143 (SIGTERM), as the single-process path does (``JobInterrupted``).

A terminal's Ctrl-C goes to the whole process group, the local cluster's worker processes included,
and each printed a traceback. Workers started inside ``workers_ignore_sigint`` inherit SIGINT blocked:
the client alone handles it, and closing the cluster ends them. A second signal restores the previous
handling at once (the usual "press again to force").
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from sbd_stream.stop_pending import take_pending

__all__ = [
    "JobInterrupted",
    "SchedulerLost",
    "StopFlag",
    "lost_scheduler",
    "ordered",
    "refuse_closed_port",
    "workers_ignore_sigint",
]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class JobInterrupted(SystemExit):
    """The job stopped on a signal after flushing ``done`` of ``total`` frames; the exit status is
    128 + the signal's number (130 for SIGINT, 143 for SIGTERM). A ``SystemExit``, so that every
    command running the job exits with that status without catching it."""

    def __init__(self, signum: int, done: int, total: int) -> None:
        super().__init__(128 + signum)
        self.signum, self.done, self.total = signum, done, total

    def __str__(self) -> str:
        return f"interrupted after frame {self.done} of {self.total}; run the same command to resume"


class SchedulerLost(ConnectionError):
    """The client lost its Dask scheduler mid-job (killed, its machine gone): one line, the partial kept.

    Why: Dask cancels every future then (``FutureCancelledError: ... scheduler-connection-lost``), and
    that surfaced as a 74-line traceback with exit status 1. A ``ConnectionError``, so the commands'
    handling of ``OSError`` prints it in one line with exit status 2."""


def lost_scheduler(e: BaseException) -> bool:
    """Whether waiting on a result failed because the scheduler is gone, not because the task did."""
    from concurrent.futures import CancelledError

    from distributed.comm.core import CommClosedError

    return isinstance(e, CancelledError | CommClosedError)


def refuse_closed_port(scheduler: str) -> None:
    """Refuse at once a scheduler address where nothing listens (connection refused): the client
    retried it for its whole connect timeout, 30 s, before "Timed out trying to connect"."""
    import socket

    from distributed.comm import parse_address, parse_host_port

    host, port = parse_host_port(parse_address(scheduler)[1])
    try:
        socket.create_connection((host, port), timeout=5).close()
    except ConnectionRefusedError:
        raise ConnectionRefusedError(
            f"{scheduler}: connection refused (no Dask scheduler listens there; start one with "
            "`dask scheduler`, or check the address)"
        ) from None
    except OSError:  # unreachable, slow or unnamed: the client's own connect and its message
        pass


class StopFlag:
    """Set by SIGINT / SIGTERM / SIGHUP while ``installed`` (main thread only; elsewhere it stays unset).

    SIGHUP killed a Dask job's client at once (its partial's sidecar then behind its data), where the
    single-process path and the live commands stopped cleanly."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __bool__(self) -> bool:
        return self.signum is not None

    def _handler(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is not None:  # a second signal: what it did before this job, now
            self._restore()
            os.kill(os.getpid(), signum)
            return
        self.signum = signum

    def _restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    @contextmanager
    def installed(self) -> Iterator[StopFlag]:
        """SIGINT, SIGTERM and SIGHUP (a closed terminal or ssh session; unless it is ignored, as under
        ``nohup``, meant to outlive the terminal, as ``cli.app.on_signals`` does) set the flag."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        hup = getattr(signal, "SIGHUP", None)  # none on Windows
        ignored = hup is None or signal.getsignal(hup) is signal.SIG_IGN
        for sig in (*SIGNALS, *(() if ignored else (hup,))):
            self._previous[sig] = signal.signal(sig, self._handler)
        if (early := take_pending()) is not None:  # a Ctrl-C swallowed while the job loaded (stop_pending)
            self.signum = early
        try:
            yield self
        finally:
            self._restore()


@contextmanager
def workers_ignore_sigint() -> Iterator[None]:
    """Threads and processes started inside (a LocalCluster's event loop and the worker processes it
    spawns, at any later time) have SIGINT blocked; the calling thread gets its mask back after."""
    if not hasattr(signal, "pthread_sigmask"):  # not POSIX: nothing to inherit
        yield
        return
    from multiprocessing import resource_tracker

    # started here first: starting it later unblocks SIGINT in the thread that starts it (CPython's
    # resource_tracker.ensure_running), which then spawned the workers with SIGINT deliverable
    resource_tracker.ensure_running()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def ordered(
    client: Any, fn: Callable, args: tuple, batch: int, chunks: list, limit: int, resources: dict | None,
    gpu: bool, stop: StopFlag | None = None,
) -> Generator[tuple, None, None]:  # fmt: skip
    """``((a, b), *fn(*args, a, b, batch, gpu))`` per chunk, in frame order; at most ``limit`` chunks
    submitted or waiting in the reorder buffer (memory stays bounded whatever the file's length).

    Ends early once ``stop`` is set, the chunks in flight cancelled: the wait is polled, never a
    blocking call a signal could not get out of. Raises ``SchedulerLost`` when the scheduler is gone."""
    from distributed import as_completed

    ac, owner = as_completed(), {}
    buf: dict[int, Any] = {}  # chunk number -> its result, until its turn
    nxt = sub = 0

    def fill() -> None:
        nonlocal sub
        while sub < len(chunks) and ac.count() + len(buf) < limit:
            fut = client.submit(fn, *args, *chunks[sub], batch, gpu, pure=False, resources=resources)
            owner[fut.key] = (sub, fut)
            ac.add(fut)
            sub += 1

    def result(fut: Any) -> Any:
        try:
            return fut.result()  # a worker's exception is raised here
        except Exception as e:
            if lost_scheduler(e):
                raise SchedulerLost(str(e)) from None
            raise

    try:
        fill()
        while nxt < len(chunks):
            while not ac.has_ready():
                if stop:
                    return
                time.sleep(0.02)
            fut = next(ac)
            buf[owner.pop(fut.key)[0]] = result(fut)
            fut.release()
            while nxt in buf:
                yield chunks[nxt], *buf.pop(nxt)
                nxt += 1
            fill()
    finally:  # stopped, failed or abandoned: what is still running is not wanted any more
        if owner:
            with contextlib.suppress(Exception):  # a closed client: its cluster forgot them with it
                client.cancel([f for _, f in owner.values()])
