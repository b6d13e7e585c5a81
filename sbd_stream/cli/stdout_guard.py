"""Standard output that cannot be written, for both console entries (``sbd-stream``, ``sbd-train``).

Why: a reader that went away (``sbd-stream --help | head -1``) ended the command with status 1 (click's
own answer to EPIPE), which fails a ``set -o pipefail`` script for nothing; a full disk or an I/O error
(``sbd-stream info > /dev/full``, ``denoise ... > summary.json`` on a full disk) ended in a rich
traceback and status 1. Now:

- a closed pipe ends quietly, status 0, as ``info | head -1`` already did when its output fitted the
  pipe: the reader asked for no more;
- any other failure is one line, ``error: cannot write to standard output (No space left on device:
  /dev/full)``, and status 2 (a status a command already chose for an error it reported stays). Also
  when the command's own work is done (``denoise`` wrote its output file in full, ``demo`` ran): its
  JSON summary is part of what it promised, and a script that checks ``$?`` and then reads
  ``summary.json`` must not take a lost summary as written (as coreutils exit 1 on a write error).

Either way standard output is then pointed at ``/dev/null`` (Python's documentation, "Note on
SIGPIPE"), so what is still buffered does not fail again at the interpreter's shutdown ("Exception
ignored ... BrokenPipeError", status 120).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["run_watching_stdout"]


class _WatchedFile(io.FileIO):
    """Standard output's descriptor, remembering the first write that failed (the file object that
    raised it may be click's, rich's or ours, and an exception may be caught and re-worded on the way:
    the descriptor knows)."""

    failed: OSError | None = None

    def write(self, b: Any, /) -> int:  # a bytes-like object (typeshed's ReadableBuffer)
        try:
            return super().write(b)
        except OSError as e:
            if _WatchedFile.failed is None:
                _WatchedFile.failed = e
            raise


def _watch() -> bool:
    """Put ``sys.stdout`` on a ``_WatchedFile`` of the same descriptor, encoding and buffering; False
    where there is none to watch (closed with ``>&-``, or replaced by a caller)."""
    out = sys.stdout
    if not isinstance(out, io.TextIOWrapper):
        return False
    try:
        fd = out.fileno()
    except (OSError, ValueError):
        return False
    _WatchedFile.failed = None
    raw = _WatchedFile(fd, "w", closefd=False)
    sys.stdout = io.TextIOWrapper(
        io.BufferedWriter(raw),
        encoding=out.encoding,
        errors=out.errors,
        line_buffering=out.line_buffering,
        write_through=out.write_through,
    )
    return True


def _target() -> str:
    """Where standard output goes, when it is a named file (``/dev/full``, a path): for the message."""
    with contextlib.suppress(OSError):
        where = os.readlink("/proc/self/fd/1")
        if where.startswith("/"):
            return where
    return ""


def _silence() -> None:
    """Standard output to ``/dev/null``: what is still buffered goes nowhere, without an error."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)


def run_watching_stdout(body: Callable[[], object]) -> None:
    """Run the CLI ``body`` and flush standard output; a write to it that failed ends as the module
    docstring says (``SystemExit``), anything else goes on as it was."""
    if not _watch():
        body()
        return
    code: object = 0
    try:
        try:
            body()
        finally:
            with contextlib.suppress(OSError, ValueError):  # what the command left buffered
                sys.stdout.flush()
    except SystemExit as e:
        code = e.code
        if _WatchedFile.failed is None:
            raise
    except OSError as e:
        if _WatchedFile.failed is None or e.errno != _WatchedFile.failed.errno:
            raise
        code = None  # the failed write itself, uncaught: nothing said yet
    failed = _WatchedFile.failed
    if failed is None:
        return
    where = _target()  # before ``_silence`` points it at /dev/null
    _silence()
    if failed.errno == errno.EPIPE:
        raise SystemExit(code if isinstance(code, int) and code > 1 else 0)  # 1: click's EPIPE status
    if isinstance(code, int) and code != 0:
        raise SystemExit(code)  # the command said what failed already (export: "error: ...", 2)
    why = failed.strerror or str(failed)
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"error: cannot write to standard output ({why}{': ' + where if where else ''})\n")
        sys.stderr.flush()
    raise SystemExit(2)
