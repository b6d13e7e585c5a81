"""The one-daemon-thread lifecycle shared by every I/O stage (ingest, publisher, recorder, replay).

Each stage runs its loop in a background thread that must be startable, stoppable and joinable the same
way, so the pipeline can shut them down in order; keeping it in one place keeps shutdown behaviour the
same everywhere. The thread runs under a ``Supervisor`` (sbd_stream/supervisor.py): a loop that dies is
restarted, so whatever the loop owns (sockets, files) is released in ``_finalize``, once, when the loop
is over for good, never in a ``finally`` inside ``_run``.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from sbd_stream.supervisor import Supervisor


class BackgroundWorker(ABC):
    """Mix-in: ``start`` runs ``_run`` supervised on a daemon thread; ``stop`` sets ``_stop``; ``join`` waits.

    ``stage`` names it in the supervision metrics; ``restartable`` False for loops that must not run
    twice (a file replay would send its frames again).
    """

    thread_name = "sbd-worker"
    stage = "worker"
    restartable = True
    _stop: threading.Event
    _thread: threading.Thread | None
    supervisor: Supervisor

    def _init_worker(self, supervisor: Supervisor | None = None) -> None:
        self._stop = threading.Event()
        self._thread = None
        self.supervisor = supervisor or Supervisor(getattr(self, "metrics", None))

    @abstractmethod
    def _run(self) -> None:
        """The stage's loop; returns when ``_stop`` is set (or its queue is closed and drained)."""

    def _finalize(self) -> None:  # noqa: B027 - optional hook, most stages own nothing to release
        """Release what the loop owns; runs once after the loop ended for good."""

    def start(self) -> None:
        self._thread = self.supervisor.spawn(
            self.stage, self._run, self._finalize, name=self.thread_name, restartable=self.restartable
        )

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)


def consume(
    queue: Any,
    handle: Callable[[Any], object],  # its return value is not used
    stage: str,
    supervisor: Supervisor,
    on_error: Callable[[Any, Exception], None] | None = None,
    tick: Callable[[], None] | None = None,
) -> None:
    """Hand every queued item to ``handle`` until the queue is closed and empty (a drain, not a drop).

    Each item is handled behind the supervisor's guard: one that raises is counted and set aside and
    the next one is taken. ``tick`` runs at least every 0.2 s, busy or idle (timeouts of the stage).
    """
    while True:
        item = queue.get(timeout=0.2)
        if item is None:
            if queue.closed:
                return
        else:
            supervisor.call(stage, handle, item, on_error=on_error)
        if tick is not None:
            tick()
