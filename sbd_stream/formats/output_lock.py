"""One job per output file: an exclusive lock on ``<output>.lock``, held for the whole job.

Why: nothing stopped two ``denoise`` jobs (or a ``denoise`` and a ``replay --offline``) writing the
same output. The second one's ``h5py.File(partial, "w")`` truncated the first one's partial before
HDF5's own lock refused it, and the first then exited 0 with half its frames unreadable; under Dask
the second one started the first one's partial over, and the first reported its own input over the
other's frames. Now the second job refuses at once, in one line naming the holder's pid.

``flock`` locks are released by the kernel when their holder dies (SIGKILL, a crash), so a lock file
left behind never blocks a later job. The file is removed when the job ends; a job that acquires a
lock on a file another job has just removed checks the name still points at its inode, and tries
again otherwise. Where ``flock`` is missing (Windows) or the file system refuses it (some network
mounts), the job goes on unlocked: it never was locked before.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["OutputBusy", "lock_path", "output_lock"]


class OutputBusy(RuntimeError):
    """Another job holds the output's lock."""


def lock_path(output: Path) -> Path:
    """``<output>.lock``, next to the output (and its ``.partial``), where a user looking sees it."""
    output = Path(output)
    return output.with_name(output.name + ".lock")


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


@contextlib.contextmanager
def output_lock(output: Path) -> Iterator[Path | None]:
    """Hold the lock of ``output`` for the ``with`` block; raises ``OutputBusy`` if another job holds
    it. Yields the lock file's path (None where locking is unavailable)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield None
        return
    path = lock_path(output)
    for _ in range(10):  # a lock file removed between our open and our lock: open it again
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputBusy(
                    f"{output}: another job is writing it{_holder(path)} (its lock: {path}); wait for it "
                    "to finish, or write to another file"
                ) from None
            yield None  # ENOLCK / EOPNOTSUPP: this file system does not lock
            return
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    else:  # pragma: no cover - ten removals in a row
        raise OutputBusy(f"{output}: its lock {path} keeps changing; another job is starting or ending")
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # while still locked: a job waiting on this inode sees it gone and retries
        os.close(fd)
