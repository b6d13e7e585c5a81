"""The demo's emulator child leaves no pipe open: ``ResourceWarning: unclosed file`` under
``PYTHONWARNINGS=error`` / ``python -X dev`` came from its stdout pipe, never closed by ``close()``."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration  # real child processes and sockets

SCRIPT = """
import gc
from sbd_stream.sources.emulator_process import EmulatorProcess
from sbd_stream.sources.emulator_settings import EmulatorSettings

emu = EmulatorProcess(EmulatorSettings(endpoint="tcp://127.0.0.1:*", shape=(16, 16), n_frames=5))
emu.close()
emu.close()  # a second close does nothing more
assert emu.proc.returncode == 0 and emu.done() and emu.n_sent == 0
del emu
gc.collect()
print("closed")
"""


@pytest.mark.timeout(120)
def test_closing_the_child_emulator_closes_both_of_its_pipes() -> None:
    r = subprocess.run(
        [sys.executable, "-W", "error::ResourceWarning", "-c", SCRIPT],
        capture_output=True, text=True, timeout=100,
    )  # fmt: skip
    assert r.returncode == 0 and r.stdout.strip() == "closed", r.stderr[-3000:]
    assert "ResourceWarning" not in r.stderr, r.stderr[-3000:]
