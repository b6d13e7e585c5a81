"""`sbd-stream demo` and a terminal's Ctrl-C while the emulator's child process starts (audit h33).

Why: a terminal sends Ctrl-C to the whole foreground process group, the emulator's child included. The
child ignored SIGINT only from its ``main()``, after its imports (torch: seconds), so a Ctrl-C in those
seconds killed it, and the demo ended in a traceback (``EmulatorExited: the emulator process was killed
by signal 2 before it started``, exit 1) instead of its clean stop. The child now runs in a process
group of its own and is ended by the parent. Real command, real child, real SIGINT to the group.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers_procs import child_processes, kill_if_running, own_group_signals_default

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(240),
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads child processes from /proc"),
]


def test_ctrl_c_to_the_group_while_the_emulator_starts_is_a_clean_stop(
    tmp_path: Path, tiny_engine_dir: Path
) -> None:
    args = [sys.executable, "-m", "sbd_stream", "demo", "--frames", "400", "--synthetic", "--shape", "64x64"]
    args += ["--rate", "20", "--no-likelihood", "--model", str(tiny_engine_dir), "--engine", "torch"]
    args += ["--no-record"]
    err = tmp_path / "err.txt"
    with err.open("w") as e:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=e, preexec_fn=own_group_signals_default)
    try:
        child = None
        while child is None and proc.poll() is None:  # the emulator's child, just spawned: still importing
            child = next((p for p, cmd in child_processes(proc.pid) if b"emulator_process" in cmd), None)
            time.sleep(0.002)
        assert child is not None, err.read_text()
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
        out, _ = proc.communicate(timeout=180)
    finally:
        kill_if_running(proc)
    said = err.read_text()
    assert proc.returncode == 0, said[-3000:]  # was 1, "EmulatorExited: ... killed by signal 2"
    assert "Traceback" not in said and "EmulatorExited" not in said, said[-3000:]
    assert "SIGINT: stopping" in said
    summary = json.loads(out)
    assert summary["frames_sent"] < 400  # stopped, not run to its end
    assert not child_processes(proc.pid)
