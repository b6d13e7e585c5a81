"""Child processes of a test: who they are (``/proc``), how they start, how a test makes sure they end.

Why one module: the demo Ctrl-C tests, the ``sbd-train simulate`` / ``train`` stop tests, the CLI
signal tests, the ``serve`` process tests and the offline Dask kill tests each carried their own copy
of the ``/proc`` child (or process group) listing, of the signals-at-default ``preexec_fn``, of the
piped ``Popen`` and of the stop-it-if-still-running ``finally``; a fix to one (a command name holding
``)`` in ``/proc/PID/stat``, a group left running) reached only that copy. Linux only (``/proc``),
like the tests using it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
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


def group_alive(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``, from ``/proc`` (the state and the group
    are read after the last ``)`` of ``/proc/PID/stat``)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def group_gone(pgid: int, timeout: float = 20.0) -> bool:
    """Whether process group ``pgid`` has no live process left within ``timeout`` seconds: a killed
    Dask client's workers must not outlive it (they end on their own, so this polls)."""
    end = time.monotonic() + timeout
    while group_alive(pgid):
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


def signals_at_default(*signals: int) -> Callable[[], None]:
    """A ``preexec_fn`` that puts ``signals`` back at their defaults in the child. A suite started as a
    background job of a shell without job control (``cmd &`` in a script: SIGINT ignored) or under
    ``nohup`` (SIGHUP ignored) hands the ignore down, and a command rightly keeps an ignore it
    inherits; a test of how a command stops on a signal must start it as an interactive shell would."""

    def preexec() -> None:
        for s in signals:
            signal.signal(s, signal.SIG_DFL)

    return preexec


interactive_signals_default = signals_at_default(signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""``preexec_fn``: SIGINT / SIGTERM / SIGHUP at their defaults, as from an interactive shell."""


def own_group_signals_default() -> None:
    """In the child (``preexec_fn``): a process group of its own, so the test can signal that group
    (``os.killpg``) as a terminal's Ctrl-C does and never pytest's, and SIGINT / SIGTERM / SIGHUP at
    their defaults, as from an interactive shell (a suite run in the background or under ``nohup``
    hands an ignore down, which a command rightly keeps)."""
    os.setpgid(0, 0)
    interactive_signals_default()


def start_piped(cmd: Sequence[str], **popen: Any) -> subprocess.Popen[str]:
    """``cmd`` started with stdout and stderr as text pipes (the test reads what a user sees) and, unless
    ``popen`` names another ``preexec_fn``, SIGHUP at its default (conftest.hup_default: a suite run
    under ``nohup`` must not hand its ignore down). Other ``popen`` keywords go to ``subprocess.Popen``."""
    popen.setdefault("preexec_fn", hup_default)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def kill_if_running(
    proc: subprocess.Popen, *, group: bool = False, timeout: float | None = None, drain: bool = False
) -> None:
    """For a test's ``finally``: a child still running (the test failed before it ended) is SIGKILLed --
    with ``group``, its whole process group (it was started as a group leader: its workers too) -- and
    reaped, so no process outlives the test; with ``drain``, reaped by ``communicate()``, which also
    reads its pipes to the end and closes them. One that already ended is left as it is."""
    if proc.poll() is None:
        if group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
        if drain:
            proc.communicate(timeout=timeout)
        else:
            proc.wait(timeout)


def interrupt_then_kill(proc: subprocess.Popen, grace: float = 60.0) -> None:
    """For a test's ``finally`` when the test also checks the exit status: SIGINT (as Ctrl-C) to a child
    still running, ``grace`` seconds for it to stop cleanly, then SIGKILL and 10 s to reap it. Unlike
    ``kill_if_running`` a passing test's child is stopped this way too, so its status can be asserted."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
