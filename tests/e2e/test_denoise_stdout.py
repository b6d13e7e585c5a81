"""`sbd-stream denoise --scheduler none` as a script runs it: stdout is the JSON summary, nothing else.

The in-process path drew its rich progress bar on stdout (the Dask path on stderr), so ``denoise ... |
jq`` and ``json.load`` failed. rich draws a bar's last state when it stops even without a terminal, so a
piped run takes the bar path; ``FORCE_TERMINAL`` adds the live redraws a user at a terminal sees.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration


@pytest.mark.timeout(240)
@pytest.mark.parametrize("terminal", [False, True], ids=["piped", "forced-terminal"])
def test_scheduler_none_keeps_stdout_plain_json(
    terminal: bool, tiny_engine_dir: Path, tmp_path: Path
) -> None:
    np.save(tmp_path / "in.npy", np.random.default_rng(0).poisson(0.45, (12, 48, 40)).astype(np.uint16))
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_TERMINAL", "TTY_COMPATIBLE", "NO_COLOR")}
    if terminal:
        env["FORCE_TERMINAL"] = "1"
    cmd = [
        sys.executable, "-m", "sbd_stream", "denoise", str(tmp_path / "in.npy"), str(tmp_path / "out.h5"),
        "--model", str(tiny_engine_dir), "--engine", "torch", "--orientations", "1", "--batch", "4",
        "--scheduler", "none",
    ]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=200, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)  # the whole of stdout, as `json.load(sys.stdin)` reads it
    assert summary["frames"] == 12 and summary["scheduler"] == "in-process"
    assert "denoising" in r.stderr and "12/12" in r.stderr, r.stderr[-3000:]  # the bar ran, on stderr
