"""Child processes of a test: who they are (``/proc``), how they start, how a test makes sure they end.

Why one module: the demo Ctrl-C tests, the ``sbd-train simulate`` stop test and the CLI signal tests
each carried their own copy of the ``/proc`` child listing, of the "as in a terminal" ``preexec_fn``,
of the piped ``Popen`` and of the kill-if-still-running ``finally``; a fix to one (a command name
holding ``)`` in ``/proc/PID/stat``, a group left running) reached only that copy. Linux only
(``/proc``), like the tests using it.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from conftest import hup_default


def child_processes(pid: int) -> list[tuple[int, bytes]]:
    """(pid, NUL-separated command line) of each process whose parent is ``pid``, zombies included.

    The parent is read after the last ``)`` of ``/proc/PID/stat``: a command name may hold one."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (d / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):  # gone meanwhile, or not ours to read
            continue
        if ppid == pid:
            found.append((int(d.name), cmd))
    return found


def own_group_signals_default() -> None:
    """In the child (``preexec_fn``): a process group of its own, so the test can signal that group
    (``os.killpg``) as a terminal's Ctrl-C does and never pytest's, and SIGINT / SIGTERM / SIGHUP at
    their defaults, as from an interactive shell (a suite run in the background or under ``nohup``
    hands an ignore down, which a command rightly keeps)."""
    os.setpgid(0, 0)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_DFL)


def start_piped(cmd: Sequence[str], **popen: Any) -> subprocess.Popen[str]:
    """``cmd`` started with stdout and stderr as text pipes (the test reads what a user sees) and, unless
    ``popen`` names another ``preexec_fn``, SIGHUP at its default (conftest.hup_default: a suite run
    under ``nohup`` must not hand its ignore down). Other ``popen`` keywords go to ``subprocess.Popen``."""
    popen.setdefault("preexec_fn", hup_default)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def kill_if_running(proc: subprocess.Popen, *, group: bool = False, timeout: float | None = None) -> None:
    """For a test's ``finally``: a child still running (the test failed before it ended) is SIGKILLed --
    with ``group``, its whole process group (it was started as a group leader: its workers too) -- and
    reaped, so no process outlives the test. One that already ended is left as it is."""
    if proc.poll() is None:
        if group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
        proc.wait(timeout)
