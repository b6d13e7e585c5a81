"""``merge --output`` on the port of its own ``--metrics-port`` says so, not "another sbd-stream?".

Why (review h34): the metrics server binds first, so ``merge --metrics-port P --output tcp://127.0.0.1:P``
failed on the merge's own port and told the user "Address already in use (another sbd-stream? choose
another port)", sending them to look for a program that does not exist. ``serve`` names the clash of two
of its own settings ("the same port as metrics.port"). Real processes, real sockets on 127.0.0.1.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SBD = str(Path(sys.executable).parent / "sbd-stream")  # the installed console script


def _errors(*args: str) -> tuple[int, list[str], str]:
    p = subprocess.run([SBD, "merge", *args], capture_output=True, text=True, timeout=90)
    out = p.stdout + p.stderr
    return p.returncode, [ln for ln in out.splitlines() if ln.startswith("error:")], out


@pytest.mark.parametrize("host", ["127.0.0.1", "*"])
def test_an_output_on_its_own_metrics_port_is_named_as_such(host: str) -> None:
    port = free_port()
    output = f"tcp://{host}:{port}"
    code, errors, out = _errors("--input", f"tcp://127.0.0.1:{free_port()}", "--output", output,
                                "--metrics-port", str(port))  # fmt: skip
    assert code == 2 and "Traceback" not in out, out
    own = "the same port as --metrics-port: give each its own"
    assert errors == [f"error: --output {output}: Address already in use ({own})"], out
