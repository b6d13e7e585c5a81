"""Whether a command can write where it is told to, tried at start: a folder of recordings, a results file.

Why tried and not looked up (``os.access``): as root every mode bit says yes, a read-only mount or an
ACL says no, and only a real ``mkdir`` and file creation answer for all of them. Why at start: the
recorder made its folder once the engine had loaded (a 40-line traceback for a read-only parent or a
path that is a file), and an existing read-only folder gave a service that looked healthy and dropped
every recording; ``demo --json-out`` wrote its file after the whole run. Each check leaves nothing
behind: what it created is removed again (the recorder creates its folder when it starts).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["file_problem", "folder_problem"]


def folder_problem(folder: Path) -> str | None:
    """Why files cannot be created in ``folder`` (made with its parents if missing), or None. A folder
    on the way this user cannot enter (another user's 0700 home) is a reason too, not a traceback."""
    missing: list[Path] = []  # what mkdir will create, deepest first: removed again below
    try:
        p = Path(folder)
        while not (p.exists() or p.is_symlink()) and p.parent != p:
            missing.append(p)
            p = p.parent
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            return "exists and is not a folder"
        except OSError as e:
            return f"cannot create it ({e.strerror or e})"
        try:
            fd, name = tempfile.mkstemp(prefix=".sbd-write-check-", dir=folder)
            os.close(fd)
            os.unlink(name)
        except OSError as e:
            return f"cannot write in it ({e.strerror or e})"
    except OSError as e:  # stat of a path under a folder this user cannot enter
        return f"cannot reach it ({e.strerror or e})"
    finally:  # also when mkdir failed half-way (a name too long below new folders)
        for made in missing:
            with contextlib.suppress(OSError):
                made.rmdir()
    return None


def file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be written as a file (its folder missing or read-only, a folder by that name,
    a read-only file), or None. An existing file is opened for writing without truncating it; a device
    or pipe (``/dev/stdout``) is left to the write."""
    try:
        return _file_problem(Path(path))
    except OSError as e:  # stat under a folder this user cannot enter
        return f"cannot reach it ({e.strerror or e})"


def _file_problem(path: Path) -> str | None:
    if path.is_dir():
        return "is a folder"
    if path.exists():
        if not path.is_file():
            return None
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError as e:
            return f"cannot write it ({e.strerror or e})"
        return None
    parent = path.parent
    if not parent.is_dir():
        return f"no folder {parent}" if not parent.exists() else f"{parent} is not a folder"
    problem = folder_problem(parent)
    return None if problem is None else f"folder {parent}: {problem}"
