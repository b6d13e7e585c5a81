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

The lock file's name is predictable and the job writes its pid into it, so it is opened without
following a symbolic link and refused unless it is a regular file with no other name: a link someone
left at ``out.h5.lock`` in a shared folder made ``denoise`` truncate the link's target (any file the
user may write) to its pid (audit h30).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
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


def _open_own(output: Path, path: Path) -> int:
    """The lock file opened (created if missing) for writing, never through a symbolic link and only
    if it is a regular file with one name (a hard link to another file would be written just the
    same); ``OutputBusy`` naming it otherwise, with what to do."""
    refusal = (
        f"{output}: its lock {path} is {{what}}, not a lock file sbd-stream made; remove it (and check "
        "who can write to this folder) and run again"
    )
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OutputBusy(refusal.format(what="a symbolic link")) from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        what = "not a regular file" if not stat.S_ISREG(st.st_mode) else f"a file with {st.st_nlink} names"
        raise OutputBusy(refusal.format(what=what))
    return fd


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
        fd = _open_own(output, path)
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
