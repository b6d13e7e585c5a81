"""Standard output that cannot be written, through both console entries (``cli/stdout_guard.py``).

A reader that went away (``--help | head -1``) ended with status 1 and failed a ``set -o pipefail``
script; a full device (``info > /dev/full``) ended in a rich traceback and status 1. Now: a closed pipe
is status 0 without a word, and a write error is one ``error:`` line and status 2, also when the
command's own work is done (``denoise``'s output file, ``demo``'s ``--json-out``: both written in full).
The pipe here is closed before the child starts, so every write it tries gets EPIPE, however fast.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

pytestmark = pytest.mark.integration  # real processes, pipes and devices

STREAM = [sys.executable, "-m", "sbd_stream"]
TRAIN = [sys.executable, "-m", "training.console"]  # the sbd-train console entry
FULL = "error: cannot write to standard output (No space left on device: /dev/full)"


def _to_closed_pipe(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``cmd`` with its standard output a pipe whose reader is gone (what ``| head -1`` leaves)."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(cmd, stdout=write, stderr=subprocess.PIPE, text=True, timeout=timeout)
    finally:
        os.close(write)


def _to_full(cmd: list[str], timeout: float = 200) -> subprocess.CompletedProcess[str]:
    with open("/dev/full", "w") as full:
        return subprocess.run(cmd, stdout=full, stderr=subprocess.PIPE, text=True, timeout=timeout)


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "cmd",
    [[*STREAM, "--help"], [*STREAM, "denoise", "--help"], [*STREAM, "info"], [*TRAIN, "--help"]],
    ids=["help", "denoise-help", "info", "sbd-train-help"],
)
def test_a_closed_pipe_on_stdout_ends_quietly_with_status_0(cmd: list[str]) -> None:
    r = _to_closed_pipe(cmd)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr[-3000:]
    assert "error" not in r.stderr.lower(), r.stderr[-3000:]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "cmd",
    [[*STREAM, "info"], [*STREAM, "--help"], [*TRAIN, "--help"]],
    ids=["info", "help", "sbd-train-help"],
)
def test_a_full_stdout_is_one_error_line_and_status_2(cmd: list[str]) -> None:
    r = _to_full(cmd)
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1] == FULL, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr[-3000:]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
@pytest.mark.timeout(300)
def test_denoise_to_a_full_stdout_keeps_its_complete_output_and_says_the_summary_is_lost(
    tiny_engine_dir: Path, tmp_path: Path
) -> None:
    """Status 2, not 0: the JSON summary is part of the result, and ``denoise ... > summary.json &&
    jq ... summary.json`` must not go on with an empty file. The output file itself is complete."""
    np.save(tmp_path / "in.npy", np.random.default_rng(0).poisson(0.45, (6, 32, 32)).astype(np.uint16))
    out = tmp_path / "out.h5"
    cmd = [
        *STREAM, "denoise", str(tmp_path / "in.npy"), str(out), "--model", str(tiny_engine_dir),
        "--engine", "torch", "--orientations", "1", "--batch", "3", "--scheduler", "none",
    ]  # fmt: skip
    r = _to_full(cmd)
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1] == FULL and "Traceback" not in r.stderr, r.stderr[-3000:]
    with h5py.File(out, "r") as f:
        assert f["denoised"].shape[0] == 6


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
@pytest.mark.timeout(300)
def test_demo_to_a_full_stdout_still_writes_its_json_out(tiny_engine_dir: Path, tmp_path: Path) -> None:
    """``--json-out`` was written after the summary was printed, so a failed print lost it too."""
    results = tmp_path / "demo.json"
    cmd = [
        *STREAM, "demo", "--frames", "4", "--synthetic", "--shape", "64x64", "--rate", "50",
        "--no-likelihood", "--no-record", "--model", str(tiny_engine_dir), "--engine", "torch",
        "--json-out", str(results),
    ]  # fmt: skip
    r = _to_full(cmd)
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1] == FULL and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert json.loads(results.read_text())["benchmark"] == "demo"
