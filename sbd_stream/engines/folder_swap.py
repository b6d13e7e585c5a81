"""Writing a folder's files all at once: stage them in a hidden folder inside it, then rename each into
place (``write_engine``).

Why: ``write_engine`` wrote ``model.pt``, then ``model.onnx``, then ``card.json`` straight into the engine
folder, so an exception between them (an ONNX export that failed, a full disk, Ctrl-C) left new weights
under the old card (checksums that no longer match) or half a file, and the previous engine was lost.
The files now go into a hidden staging folder inside the target (same file system, so a rename moves
each), and only once all are written are they renamed over the old ones, the card last; a failure
before that removes the staging folder and leaves the old files as they were.

Session 34 review: a first version built a whole new sibling folder and swapped it in by renaming the
folders. That replaced the folder itself: its owner and group became the writer's (root rewriting a
service user's engine left it root's), a shell or process whose current folder it was was left in a
deleted one (``--engine-dir .``: the test metrics written next were lost), a folder the user may write
in a parent they may not (or a mount point) could no longer be written at all - found after an hour of
training - and a process killed between the two renames left the engine only in a hidden
``.NAME.old-*``. Renaming files inside the folder keeps the folder (inode, owner, mode, other files).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

STAGE_PREFIX = ".writing-"
"""Name start of the staging folder inside the target (hidden: not an engine file, not in the wheel's
``engines/NAME/*`` glob); followed by host, process id and a random token."""


def replace_folder(target: Path, fill: Callable[[Path], T], renewed: Iterable[str] = ()) -> T:
    """Put the files ``fill(folder)`` writes into a new empty folder into ``target``, all at once.

    ``target`` is made if missing (and kept as it is otherwise: a symbolic link to it stays one, its
    other files stay); ``fill`` writes plain files only. They replace those of the same name, in the
    order of ``renewed`` last (an engine: model.pt, model.onnx, then card.json, which names the others'
    checksums); a name in ``renewed`` that ``fill`` did not write is removed (an engine's model.onnx when
    the new one has none must not outlive its card). Any exception (or KeyboardInterrupt) before the
    renames removes the staging folder and leaves ``target``'s files untouched. A process killed during
    the renames (microseconds) leaves some new files beside old ones: a load fails on the card's
    checksums. Two writers rename under a lock on ``target``, one after the other. Staging folders left
    by a killed writer on this host are removed first."""
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{target}: a file, not a folder")
    target.mkdir(parents=True, exist_ok=True)
    remove_stale_stages(target)
    host = socket.gethostname().replace("-", "_")
    stage = target / f"{STAGE_PREFIX}{host}-{os.getpid()}-{secrets.token_hex(4)}"
    if stage.exists():  # this host, this process and 32 random bits: never; the finally must not take it
        raise FileExistsError(f"{stage}: exists")
    try:  # made inside: a signal right after mkdir (its return is where Python runs handlers) left it
        stage.mkdir()
        result = fill(stage)
        order = list(renewed)
        written = set(os.listdir(stage))
        with _folder_lock(target):  # two writers at once: one engine after the other, never a mix
            for name in sorted(written - set(order)) + order:
                if name in written:
                    _keep_access(target / name, stage / name)
                    os.replace(stage / name, target / name)
                elif (target / name).is_file() or (target / name).is_symlink():
                    (target / name).unlink()
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return result


def remove_stale_stages(target: Path) -> None:
    """Remove the staging folders in ``target`` of writers on this host that no longer run (a SIGKILL
    mid-write): a full model each, and the next check of the folder would list them as other files."""
    host = socket.gethostname().replace("-", "_")
    for entry in os.scandir(target):
        if not entry.name.startswith(STAGE_PREFIX):
            continue
        owner_host, _, rest = entry.name[len(STAGE_PREFIX) :].partition("-")
        pid = rest.partition("-")[0]
        if owner_host == host and pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(entry.path, ignore_errors=True)


def is_stage(name: str) -> bool:
    """Whether an entry of an engine folder is a (live or stale) staging folder, not the user's file."""
    return name.startswith(STAGE_PREFIX)


@contextlib.contextmanager
def _folder_lock(target: Path) -> Iterator[None]:
    """An exclusive ``flock`` on the folder itself while its files are renamed (released by the kernel
    if the holder dies); where the platform or file system has none, the renames go on unlocked."""
    try:
        import fcntl

        fd = os.open(target, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except (ImportError, OSError):
        yield
        return
    try:
        with contextlib.suppress(OSError):  # some network file systems have no flock
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _keep_access(old: Path, new: Path) -> None:
    """``new`` gets ``old``'s mode, and its owner and group where this process may give them: a
    rewrite replaced the files in place before (open and truncate), so a service user's read access
    set on model.pt or card.json stayed; a new file has the umask's mode (077: the writer's alone)."""
    try:
        st = old.stat()
    except OSError:  # no old file (or a dangling link): the umask's mode, as any new file
        return
    os.chmod(new, stat.S_IMODE(st.st_mode))
    with contextlib.suppress(OSError):  # only root may give a file away; a member may change its group
        os.chown(new, st.st_uid if os.geteuid() == 0 else -1, st.st_gid)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: running
        return True
    return True
