"""The session-level process check (tests/leakcheck.py) finds, kills and reports what tests leave running."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import leakcheck
import pytest

TESTS = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def test_finds_children_and_orphans_carrying_the_token_and_kills_only_them() -> None:
    token = "leak-" + os.urandom(4).hex()
    env = {**os.environ, leakcheck.TOKEN_VAR: token}
    child = subprocess.Popen(["sleep", "60"], env=env)
    # an orphan: its parent shell exits at once, init adopts it, the environment still names the session
    out = subprocess.run(
        ["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"], env=env, capture_output=True, text=True
    )
    orphan = int(out.stdout.strip())
    other = subprocess.Popen(["sleep", "60"])  # not of this (fake) session: must be left alone
    try:
        found = {p.pid for p in leakcheck.leftovers(token)}
        assert {child.pid, orphan} <= found and other.pid not in found
        leakcheck.reap([p for p in leakcheck.leftovers(token)])
        child.wait(5)
        end = time.monotonic() + 5
        while _alive(orphan) and time.monotonic() < end:
            time.sleep(0.05)
        assert not _alive(orphan) and child.returncode is not None
        assert leakcheck.leftovers(token) == [] and _alive(other.pid)
    finally:
        for p in (child, other):
            p.kill()
            p.wait(5)
        if _alive(orphan):
            os.kill(orphan, 9)


INNER_CONFTEST = """
import sys
sys.path.insert(0, {tests!r})
from leakcheck import pytest_sessionfinish, pytest_sessionstart  # noqa: F401
"""

INNER_TEST = """
import subprocess
from pathlib import Path

def test_cleans_up(tmp_path):
    p = subprocess.Popen(["sleep", "60"])
    p.kill()
    p.wait()

def test_leaks():
    p = subprocess.Popen(["sleep", "60"])
    Path({pidfile!r}).write_text(str(p.pid))
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("leak", [False, True])
def test_a_session_that_leaves_a_process_fails_and_names_it(tmp_path: Path, leak: bool) -> None:
    pidfile = tmp_path / "leaked.pid"
    (tmp_path / "conftest.py").write_text(INNER_CONFTEST.format(tests=str(TESTS)))
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(INNER_TEST.format(pidfile=str(pidfile))))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    sel = "test_leaks or test_cleans_up" if leak else "test_cleans_up"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", sel, str(tmp_path)]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=100)
    if not leak:
        assert r.returncode == 0, r.stdout[-2000:]
        return
    assert r.returncode == 1, r.stdout[-2000:]
    assert "still running (now killed)" in r.stdout and "sleep 60" in r.stdout
    pid = int(pidfile.read_text())
    end = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < end:
        time.sleep(0.05)
    assert not _alive(pid)
