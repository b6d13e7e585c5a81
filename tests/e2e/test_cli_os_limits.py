"""Process limits and file-name limits at the commands: one ``error:`` line, exit 2, never a traceback.

- ``serve`` / ``demo`` at ``ulimit -n 32`` ran and lost frames and a whole acquisition (the publisher
  failed every frame from the sixth, the next acquisition's connection was never made); a soft limit
  is raised to the hard one, and a hard one under ``MIN_OPEN_FILES`` is refused before anything starts.
- ``replay NAME`` with a component over the file system's 255-byte limit: ``Path.exists()`` re-raised
  ENAMETOOLONG, a traceback and exit 1.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sbd_stream.cli import app
from sbd_stream.cli.service_start import MIN_OPEN_FILES

pytestmark = pytest.mark.integration  # real processes with real limits

LONG = "n" * 260  # over NAME_MAX (255 bytes) of every common file system


def _limited(soft: int, hard: int):
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return preexec


@pytest.mark.timeout(240)
@pytest.mark.parametrize("command", ["serve", "demo"])
def test_a_hard_open_file_limit_under_the_minimum_is_refused_in_one_line(command: str) -> None:
    ports = ["--input", "tcp://127.0.0.1:15890", "--output", "tcp://127.0.0.1:15891", "--metrics-port", "0"]
    args = {
        "serve": [*ports, "--no-record"],
        "demo": ["--frames", "2", "--shape", "64x64", "--no-record"],
    }[command]
    r = subprocess.run(
        [sys.executable, "-m", "sbd_stream", command, *args],
        capture_output=True, text=True, timeout=200, preexec_fn=_limited(32, 32),
    )  # fmt: skip
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1, r.stderr[-3000:]
    assert "open-file limit is 32" in errors[0] and f"at least {MIN_OPEN_FILES}" in errors[0], errors
    assert "ulimit -n" in errors[0] and "Traceback" not in r.stderr, r.stderr[-3000:]


@pytest.mark.timeout(120)
def test_a_low_soft_limit_is_raised_to_the_hard_one_and_logged() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 2 * MIN_OPEN_FILES:
        pytest.skip(f"the hard limit here ({hard}) leaves nothing to raise")
    code = (
        "import logging, resource\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "from sbd_stream.cli.service_start import prepare_process\n"
        "prepare_process()\n"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=100,
        preexec_fn=_limited(32, hard),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    soft = int(r.stdout.strip())
    assert soft >= 2 * MIN_OPEN_FILES and f"open-file limit (ulimit -n): {soft}" in r.stderr, r.stderr


def test_replay_of_a_name_over_the_file_systems_limit_is_one_line(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["replay", str(tmp_path / f"{LONG}.nxs")])
    assert res.exit_code == 2 and not isinstance(res.exception, OSError), res.output
    assert res.output.startswith("error: ") and res.output.rstrip().endswith("File name too long"), res.output


def test_replay_offline_to_an_out_name_over_the_limit_is_one_line(tmp_path: Path) -> None:
    rec = tmp_path / "rec.nxs"
    rec.write_bytes(b"")  # looked at only after --out
    res = CliRunner().invoke(app, ["replay", str(rec), "--offline", "--out", str(tmp_path / f"{LONG}.h5")])
    assert res.exit_code == 2 and not isinstance(res.exception, OSError), res.output
    assert res.output.startswith("error: --out ") and "File name too long" in res.output, res.output


def test_replay_of_a_missing_file_still_says_not_found(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["replay", str(tmp_path / "nope.nxs")])
    assert res.exit_code == 2 and res.output.strip() == f"error: {tmp_path / 'nope.nxs'} not found"
