"""Ctrl-C and SIGTERM during `sbd-stream denoise --scheduler local`: a clean, resumable stop.

The real CLI in its own session, with its own 2-worker local cluster, signalled mid-run. The audit
found SIGINT swallowed ("Exception ignored in: ... KeyboardInterrupt") in 2 of 4 tries, the job then
running to its end with status 0, and a terminal's Ctrl-C (the whole process group) printing a
traceback from every Dask worker process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import h5py
import pytest
from helpers_offline import SBD, write_stack
from helpers_procs import group_gone, kill_if_running, start_piped

pytestmark = pytest.mark.integration

N = 480


def _denoise_cmd(inp: Path, out: Path, engine: Path) -> list[str]:
    """The job signalled, and the same command run again to resume it."""
    return [
        SBD, "denoise", str(inp), str(out), "--model", str(engine), "--engine", "onnxruntime",
        "--scheduler", "local", "--dask-workers", "2", "--batch", "2", "--chunk-frames", "8",
    ]  # fmt: skip


def _interrupt(inp: Path, out: Path, engine: Path, sig: int, group: bool) -> tuple[int, str, int]:
    """Run the CLI, signal it once a chunk is written; (exit status, stderr, frames_done then)."""
    cmd = _denoise_cmd(inp, out, engine)
    side = Path(f"{out}.partial.json")
    proc = start_piped(cmd, start_new_session=True)  # its own group: the client and the cluster's workers
    done = 0
    try:
        while proc.poll() is None and done == 0:
            try:
                done = json.loads(side.read_text())["frames_done"]
            except (OSError, ValueError, KeyError):
                time.sleep(0.01)
        assert proc.poll() is None, "the job ended before it could be signalled: make it longer"
        if group:
            os.killpg(proc.pid, sig)  # a terminal's Ctrl-C: the client and the cluster's workers
        else:
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=90)
    finally:
        kill_if_running(proc, group=True, timeout=10)  # the client and the cluster's workers
        assert group_gone(proc.pid), "dask processes outlived the stopped client"
    return proc.returncode, err, done


@pytest.mark.timeout(400)
@pytest.mark.parametrize(
    ("sig", "group", "status"),
    [
        (signal.SIGINT, False, 130),
        (signal.SIGINT, True, 130),
        (signal.SIGTERM, False, 143),
        (signal.SIGHUP, False, 129),
    ],
    ids=["sigint-client", "ctrl-c-group", "sigterm", "sighup"],
)
@pytest.mark.slow  # > 20 s on 2 busy cores (audit 26)
def test_a_signal_stops_the_job_cleanly_and_the_same_command_resumes(
    binning_engine_dir: Path, tmp_path: Path, sig: int, group: bool, status: int
) -> None:
    inp = write_stack(tmp_path / "in.h5", N, (256, 256), seed=2)
    out = tmp_path / "out.h5"
    rc, err, done = _interrupt(inp, out, binning_engine_dir, sig, group)
    assert rc == status, err[-3000:]
    lines = re.findall(r"interrupted after frame (\d+) of (\d+); run the same command to resume", err)
    assert len(lines) == 1, err[-3000:]
    stopped_at, total = map(int, lines[0])
    assert total == N and done <= stopped_at < N
    assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
    assert not out.exists()  # the partial and its sidecar stay, saying how far it got
    assert json.loads(Path(f"{out}.partial.json").read_text())["frames_done"] == stopped_at
    with h5py.File(f"{out}.partial", "r") as f:
        assert f["denoised"].shape[0] == N
    if group:  # the rerun: goes on from there (bit-identity after a resume: test_offline_dask.py)
        cmd = _denoise_cmd(inp, out, binning_engine_dir)  # the same command
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, start_new_session=True)
        assert r.returncode == 0, r.stderr[-3000:]
        assert json.loads(r.stdout[r.stdout.index("{") :])["resumed_from"] == stopped_at
        assert out.exists() and not Path(f"{out}.partial").exists()
