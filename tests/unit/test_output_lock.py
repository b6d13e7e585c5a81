"""One job per output (formats/output_lock.py): a second job refused at once, naming the holder; a lock
left by a killed job never blocks; the lock file goes when the job ends."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sbd_stream.formats.output_lock import OutputBusy, lock_path, output_lock

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="flock (POSIX)")


def test_a_second_holder_is_refused_naming_the_first_and_the_lock_goes_at_the_end(tmp_path: Path) -> None:
    out = tmp_path / "out.h5"
    with output_lock(out) as held:
        assert held == lock_path(out) == tmp_path / "out.h5.lock"
        assert held.read_text().strip() == str(os.getpid())
        busy = rf"out.h5: another job is writing it \(pid {os.getpid()}\)"
        with pytest.raises(OutputBusy, match=busy), output_lock(out):
            pass
    assert not lock_path(out).exists()
    with output_lock(out):  # free again
        pass


def test_a_lock_left_by_a_killed_job_does_not_block(tmp_path: Path) -> None:
    out = tmp_path / "out.h5"
    code = textwrap.dedent(f"""
        import os
        from sbd_stream.formats.output_lock import output_lock
        with output_lock({str(out)!r}):
            os._exit(0)  # dies holding it: no cleanup ran
    """)
    subprocess.run([sys.executable, "-c", code], check=True)
    assert lock_path(out).exists()  # left behind
    with output_lock(out) as held:
        assert held is not None and held.read_text().strip() == str(os.getpid())


def test_a_holder_in_another_process_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out.h5"
    code = textwrap.dedent(f"""
        import sys
        from sbd_stream.formats.output_lock import output_lock
        with output_lock({str(out)!r}):
            print("held", flush=True)
            sys.stdin.read()
    """)
    p = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(OutputBusy, match=f"pid {p.pid}"), output_lock(out):
            pass
    finally:
        p.stdin.close()
        p.wait(30)
    assert not lock_path(out).exists()
