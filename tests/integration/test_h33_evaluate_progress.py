"""``sbd-train evaluate`` says how far it is while it runs, with its output in a file or a pipe.

Found (session 33, audit): a tiny Table 5.1 run under load took 7 minutes with an empty log. The rows went
to stdout through ``print``, block-buffered when stdout is not a terminal, so they all came at the exit,
and nothing was said while a method was tuned or run: the user could not tell whether it was alive.
Now each method (and engine) says on stderr when its tuning and its test images start and end, with
the time taken (``training/evaluate/progress.py``), and each row is flushed as it is made.

The check is the order of one merged pipe (``2>&1``, not a TTY): every write reaches it when it is made,
so a method's row must come after its ``started`` line and before the next method's. Before the fix there
was no ``started`` line at all, and a row printed but not flushed would come after everything on stderr.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from training.sim.synthetic_data import write_synthetic

pytestmark = pytest.mark.integration  # a real process with its output in a pipe

METHODS = ("Raw", "Low-pass filter", "Adaptive Wiener filter", "VST + NLM", "VST + BM3D")
"""Table 5.1's classical rows, in the order they run (training.evaluate.baselines)."""


def test_evaluate_reports_each_method_as_it_goes_into_a_pipe(tmp_path: Path) -> None:
    data = write_synthetic(tmp_path / "syn.h5", n_structures=6, per_structure=2, size=32)
    out = tmp_path / "out"
    args = ["evaluate", "--data", str(data), "--classical-only", "--no-figure", "--max-test-images", "2"]
    env = {k: v for k, v in os.environ.items() if k not in ("SBD_TRACEBACK", "PYTHONUNBUFFERED")}
    res = subprocess.run(
        [sys.executable, "-m", "training.cli", *args, "--bm3d-test-images", "1", "--out-dir", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # one pipe: the order of the lines is the order they were written in
        text=True,
        env=env,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout
    lines = res.stdout.splitlines()

    def index(pattern: str) -> int:
        found = [i for i, line in enumerate(lines) if re.search(pattern, line)]
        assert found, f"no line matching {pattern!r} in:\n{res.stdout}"
        return found[0]

    ends = [index(r"^wrote .*table_5_1\.json and \.md$")]
    assert ends[0] == len(lines) - 1, res.stdout  # stdout's last line as before
    previous_row = -1
    for m in METHODS:
        name = re.escape(m)
        tuning = index(rf"^{name} \(tuning\): started on \d+ grid settings")
        tuned = index(rf"^{name} \(tuning\): done, \d+ grid settings .* in \d+\.\d s$")
        started = index(rf"^{name}: started on \d+ test images$")
        done = index(rf"^{name}: done, \d+ test images in \d+\.\d s$")
        row = index(rf"^{name} +PSNR ")  # the table row on stdout, as before
        assert previous_row < tuning < tuned < started < done < row < ends[0], res.stdout
        previous_row = row
    assert (out / "table_5_1.json").is_file()
