"""Ctrl-C in `sbd-train simulate`, as a terminal sends it (to the whole process group, the Dask workers
too): one line saying what the file holds and that the same command resumes; no Dask shutdown noise."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import h5py
import pytest
from conftest import wait_until
from helpers_procs import own_group_signals_default

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("abtem") is None, reason="needs the 'train' extra (abTEM)"),
]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_simulation_says_what_it_kept_in_one_line_without_dask_noise(
    sig: signal.Signals, tmp_path: Path
) -> None:
    out = tmp_path / "tiny.h5"
    proc = subprocess.Popen(
        [sys.executable, "-m", "training.cli", "simulate", "--preset", "tiny", "--out", str(out),
         "--workers", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=own_group_signals_default,
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr or []), daemon=True)
    reader.start()
    try:
        # a task committed, the others running in the workers
        assert wait_until(lambda: any(ln.startswith("[1/") for ln in lines), 300), "".join(lines)
        os.killpg(proc.pid, sig)
        rc = proc.wait(120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    reader.join(10)
    after = lines[next(i for i, ln in enumerate(lines) if ln.startswith("[1/")) + 1 :]
    after = [ln for ln in after if not ln.startswith("[")]  # a task committed meanwhile
    assert rc == 128 + sig, "".join(lines)
    assert len(after) == 1, "".join(after)  # no CancelledError, nanny or leaked-semaphore warnings
    m = re.fullmatch(
        rf"interrupted: simulation into {re.escape(str(out))} stopped by {sig.name}: (\d+) tasks "
        r"\((\d+) images\) committed; rerun the same command to resume\n",
        after[0],
    )
    assert m, after[0]
    with h5py.File(out, "r") as f:
        n_img, _, n_task = (int(v) for v in f["committed"][()])
    assert (n_task, n_img) == (int(m.group(1)), int(m.group(2))) and n_task >= 1


def test_the_local_workers_leave_ctrl_c_and_sigterm_to_the_parent() -> None:
    """A worker that took the group's Ctrl-C logged "Async instruction ... ended with CancelledError"
    before the parent could kill it (1 run in 3 of the test above); the workers now ignore both."""
    from training.sim.simulate import _client

    client = _client(None, 2)
    try:
        seen = client.run(lambda: (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)))
    finally:
        client.close()
        client.cluster.close()
    assert len(seen) == 2 and all(v == (signal.SIG_IGN, signal.SIG_IGN) for v in seen.values()), seen
