"""``serve``'s banner names the output as it is (audit h33).

With ``publish.enabled = false`` the banner still said ``out tcp://127.0.0.1:5556``: an operator (or a
script reading the banner) took the output for live, though nothing was bound there and no viewer could
ever connect; ``metrics.enabled = false`` has always said ``metrics off``. A publisher that dials out
(``publish.mode = "connect"``) now says so, as the input's mode is shown.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
import zmq
from conftest import free_port
from helpers_procs import kill_if_running, start_piped


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("env", "said", "not_said"),
    [
        ({"SBD_PUBLISH__ENABLED": "false"}, "out off,", "5556"),
        ({"SBD_PUBLISH__MODE": "connect"}, "out tcp://127.0.0.1:5556 (connect),", "out off"),
    ],
)
def test_the_banner_says_where_the_output_is(
    tmp_path: Path, env: dict[str, str], said: str, not_said: str
) -> None:
    cmd = [
        sys.executable, "-m", "sbd_stream", "serve", "--no-record", "--metrics-port", "0",
        "--input", f"tcp://127.0.0.1:{free_port(zmq.Context.instance())}",
    ]  # fmt: skip
    proc = start_piped(cmd, cwd=tmp_path, env={**os.environ, **env})
    try:
        banner = ""
        for line in proc.stderr:  # the banner comes once the engine has loaded
            if line.startswith("serving:"):
                banner = line
                break
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    finally:
        kill_if_running(proc)
    assert said in banner, banner
    assert not_said not in banner, banner
    assert proc.returncode == 0
