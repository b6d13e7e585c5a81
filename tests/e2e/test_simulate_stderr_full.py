"""A simulation whose stderr cannot be written (a log on a full disk) still simulates.

Until session 28 the first progress line's OSError (``training/sim/simulate.py`` ``_log``) ended the run at
once with status 2 and an empty file: an hours-long ``sbd-train simulate ... 2>>sim.log`` lost everything
to a full log disk. The progress lines are dropped now; the committed tasks and stdout's summary count."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_full_stderr_does_not_stop_a_simulation(tmp_path: Path) -> None:
    out = tmp_path / "t.h5"
    with open("/dev/full", "w") as full:
        p = subprocess.run(
            [sys.executable, "-m", "training.console", "simulate", "--preset", "tiny", "--out", str(out),
             "--workers", "1"],
            stdout=subprocess.PIPE, stderr=full, text=True, timeout=540,
            env={**os.environ, "NO_COLOR": "1"},
        )  # fmt: skip
    assert p.returncode == 0, p.stdout[-2000:]
    with h5py.File(out, "r") as f:
        assert f["committed"].shape[0] > 0 and f["images"].shape[0] > 0


@pytest.mark.skipif(sys.platform == "win32", reason="closes the child's fd 2 (POSIX)")
def test_a_closed_stderr_does_not_stop_a_simulation(tmp_path: Path) -> None:
    """Started with ``2>&-`` Python's ``sys.stderr`` is None: the progress bar's ``isatty`` check raised
    AttributeError (status 1, nothing simulated)."""
    out = tmp_path / "t.h5"
    p = subprocess.run(
        [sys.executable, "-m", "training.console", "simulate", "--preset", "tiny", "--out", str(out),
         "--workers", "1"],
        stdout=subprocess.PIPE, stderr=None, text=True, timeout=540, pass_fds=(),
        preexec_fn=lambda: os.close(2), env={**os.environ, "NO_COLOR": "1"},
    )  # fmt: skip
    assert p.returncode == 0, p.stdout[-2000:]
    with h5py.File(out, "r") as f:
        assert f["committed"].shape[0] > 0 and f["images"].shape[0] > 0
