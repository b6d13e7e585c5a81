"""Find processes a test session started and left running (used by tests/conftest.py).

Why: a killed ``libertem-live-dectris-sim`` left its API-server child (a multiprocessing.Process)
running after every test run, and nothing noticed. Every process the session starts inherits
``SBD_TEST_SESSION=<token>`` from the environment, even after its parent died and it was adopted by
init, so at the end of the session any process still carrying the token -- apart from the session
itself and Python's own multiprocessing helpers, which end with it -- was left behind by a test.
Children of the session whose command line names a watched program are reported too, in case a
test replaced the environment. Linux only (``/proc``); elsewhere nothing is found.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

TOKEN_VAR = "SBD_TEST_SESSION"
WATCHED = ("libertem-live-dectris-sim", "sbd-stream", "sbd-train", "prometheus")
# helpers Python starts for the session itself; they exit when the session's interpreter does
_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


@dataclass(frozen=True)
class Leftover:
    pid: int
    ppid: int
    cmdline: str


def start_session() -> str:
    """Mark everything started from now on with a fresh token (children inherit the environment)."""
    token = uuid.uuid4().hex
    os.environ[TOKEN_VAR] = token
    return token


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # gone, or not ours to read
        return b""


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) from /proc/PID/stat; None when the process is gone."""
    raw = _read(Path(f"/proc/{pid}/stat"))
    if not raw:
        return None
    fields = raw[raw.rfind(b")") + 2 :].split()
    return fields[0].decode(), int(fields[1])


def _descends_from(pid: int, ancestor: int) -> bool:
    for _ in range(64):
        st = _stat(pid)
        if st is None or st[1] <= 1:
            return False
        if st[1] == ancestor:
            return True
        pid = st[1]
    return False


def leftovers(token: str, me: int | None = None) -> list[Leftover]:
    """Running processes (not zombies) started under ``token``, or watched programs below ``me``."""
    me = os.getpid() if me is None else me
    mark = f"{TOKEN_VAR}={token}".encode()
    out: list[Leftover] = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        pid = int(entry.name)
        st = _stat(pid)
        if st is None or st[0] in ("Z", "X"):
            continue
        cmd = _read(entry / "cmdline").replace(b"\0", b" ").decode(errors="replace").strip()
        if any(h in cmd for h in _HELPERS):
            continue
        tagged = mark in _read(entry / "environ").split(b"\0")
        watched = any(w in cmd for w in WATCHED) and _descends_from(pid, me)
        if tagged or watched:
            out.append(Leftover(pid, st[1], cmd[:300]))
    return out


def reap(procs: list[Leftover], timeout: float = 5.0) -> None:
    """SIGKILL exactly these processes (by id) and wait until they are gone or ``timeout``."""
    for p in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p.pid, signal.SIGKILL)
    end = time.monotonic() + timeout
    for p in procs:
        while time.monotonic() < end:
            st = _stat(p.pid)
            if st is None or st[0] in ("Z", "X"):
                break
            time.sleep(0.05)
        if p.ppid == os.getpid():  # our own child: collect it, or it stays a zombie
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(p.pid, os.WNOHANG)


# --- pytest hooks (tests/conftest.py imports these two) ---------------------------------------------
_token: str | None = None


def pytest_sessionstart(session: object) -> None:
    global _token
    _token = start_session()


def pytest_sessionfinish(session: object, exitstatus: int) -> None:
    """Fail the run when a test left a process behind, after killing it (by id) and naming it."""
    if _token is None:
        return
    left = leftovers(_token)
    if not left:
        return
    reap(left)
    config = getattr(session, "config", None)
    tr = config.pluginmanager.get_plugin("terminalreporter") if config is not None else None
    lines = [f"{len(left)} process(es) started by the tests were still running (now killed):"]
    lines += [f"  pid {p.pid} (parent {p.ppid}): {p.cmdline}" for p in left]
    for line in lines:
        if tr is not None:
            tr.write_line(line, red=True)
        else:
            print(line)
    session.exitstatus = 1  # type: ignore[attr-defined]  # pytest.ExitCode.TESTS_FAILED
