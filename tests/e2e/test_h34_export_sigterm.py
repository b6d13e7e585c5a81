"""SIGTERM during ``sbd-train export`` stops it as Ctrl-C does: one ``interrupted:`` line, status 143, the
engine's staging folder removed and the engine it replaces unchanged.

Found (docs audit h34): SIGTERM (``kill``, a scheduler's time limit) ended the export at once: no line,
killed by the signal, and the ``.writing-*`` staging folder stayed in the engine folder until the next
export. The signal is sent once the staging folder exists (seen in the folder), so the test stops the
write itself, not a phase before or after it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers_procs import kill_if_running
from helpers_runs import tiny_run

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SBD_TRAIN = str(Path(sys.executable).parent / "sbd-train")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("export-term"))


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_sigterm_mid_write_leaves_the_old_engine_and_no_staging(run: Path, tmp_path: Path) -> None:
    engine = tmp_path / "eng"
    cmd = [SBD_TRAIN, "export", str(run), "--engine-dir", str(engine), "--no-evaluate-test"]
    assert subprocess.run(cmd, capture_output=True, timeout=240).returncode == 0  # the engine it replaces
    before = _files(engine)
    for _attempt in range(5):  # the write lasts about a second (ONNX export): caught on the first try here
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            while proc.poll() is None and not any(p.name.startswith(".writing-") for p in engine.iterdir()):
                time.sleep(0.002)
            if proc.poll() is not None:
                continue  # it finished before the staging folder was seen: try again
            os.kill(proc.pid, signal.SIGTERM)
            _out, err = proc.communicate(timeout=120)
        finally:
            kill_if_running(proc)
        assert proc.returncode == 128 + signal.SIGTERM, err
        assert err.strip().splitlines()[-1] == (
            f"interrupted: export into {engine} stopped; what it held is unchanged"
        ), err
        assert _files(engine) == before  # nothing staged left, the old files as they were
        assert not [p for p in engine.iterdir() if p.name.startswith(".")]
        return
    shutil.rmtree(engine, ignore_errors=True)
    pytest.fail("the export always finished before its staging folder was seen")
