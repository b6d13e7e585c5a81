"""A Dask worker preload: the simulation's local worker processes leave Ctrl-C and SIGTERM to the parent.

Why: a terminal's Ctrl-C goes to the whole process group, the spawned Dask workers too. A worker that
took it cancelled its running abTEM task and logged "Async instruction ... ended with CancelledError"
on the shared stderr before the parent (``training/cli/sim_stop.py``) could kill it, so a stopped
``sbd-train simulate`` sometimes printed Dask noise under its one line. The parent decides what a stop
means (it kills these processes; only tasks it committed are in the file), and a worker whose parent
dies exits on its own (distributed watches the parent's pipe), so the workers ignore both signals.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

IGNORED = (signal.SIGINT, signal.SIGTERM)


def dask_setup(worker: Any = None) -> None:
    """Called by distributed in each worker process it starts (``LocalCluster(preload=[__name__])``)."""
    if threading.current_thread() is threading.main_thread():  # signal.signal works only there
        for s in IGNORED:
            signal.signal(s, signal.SIG_IGN)
