"""Every way of starting the CLI registers every command (live and scale-out ones live elsewhere)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["sbd_stream", "sbd_stream.cli"])
def test_python_dash_m_lists_every_command(module: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    for command in ("denoise", "info", "export", "serve", "replay", "emulate", "demo", "merge"):
        assert f" {command} " in out, (command, out)
