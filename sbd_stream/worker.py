"""The one-daemon-thread lifecycle shared by every I/O stage (ingest, publisher, recorder, replay).

Each stage runs its loop in a background thread that must be startable, stoppable and joinable the same
way, so the pipeline can shut them down in order; keeping it in one place keeps shutdown behaviour the
same everywhere.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any


class BackgroundWorker(ABC):
    """Mix-in: ``start`` runs ``_run`` in a daemon thread; ``stop`` sets ``_stop``; ``join`` waits."""

    thread_name = "sbd-worker"
    _stop: threading.Event
    _thread: threading.Thread | None

    def _init_worker(self) -> None:
        self._stop = threading.Event()
        self._thread = None

    @abstractmethod
    def _run(self) -> None:
        """The stage's loop; returns when ``_stop`` is set (or its queue is closed and drained)."""

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)


def consume(queue: Any, handle: Callable[[Any], None], on_depth: Callable[[int], None]) -> None:
    """Hand every queued item to ``handle`` until the queue is closed and empty (a drain, not a drop)."""
    while True:
        item = queue.get(timeout=0.2)
        if item is None:
            if queue.closed:
                return
            continue
        on_depth(len(queue))
        handle(item)
