"""One training process per run folder: an exclusive ``flock`` on ``runs/<name>/train.lock``.

Why: two ``sbd-train train --name X`` started together both wrote into ``runs/X``: the second deleted
the first one's ``log.jsonl``, ``config.json`` said one run's options while ``last.pt`` held the other's
weights, and a later resume was then checked against the wrong options (audit 24). The lock is held
for the run's life and released by the kernel when the process ends in any way (``kill -9`` included),
so a crash never leaves a stale lock to delete by hand; the file itself stays, holding the last
holder's process id, which the refusal names.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE = "train.lock"


class RunBusy(ValueError):
    """The run folder is held by another training process (a ``ValueError``: one line, exit 2)."""


class RunLock:
    """The exclusive lock of one run folder; ``release()`` (or the process's end) lets it go."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_FILE
        self._fd: int | None = None
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunBusy(
                f"{run_dir} is in use by another training run (pid {holder}): wait for it to end, "
                f"or train under another --name"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None
