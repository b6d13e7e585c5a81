"""`sbd-stream denoise` that fails while stderr cannot be written ends with the documented status, 2.

Found: ``denoise MISSING.h5 OUT.h5 2>/dev/full`` exited 1, not the 2 that an input or usage error is
documented to end with (docs/scale-out-offline.md, "A terminal or log that cannot be written"): the
``error:`` line's write raised ENOSPC out of ``cli.app.fail`` (and out of click's own report of a
usage error such as ``--bogus``), and the interpreter's status for an uncaught error replaced it. A
script that tells "bad input" (2) from "crashed" (1) by ``$?`` got it wrong. Every case runs the real
console entry in a child process with its stderr on the real ``/dev/full`` (or closed), bounded by a
timeout so a hang fails instead of blocking the suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import hup_default

pytestmark = [
    pytest.mark.integration,  # real processes and devices
    pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)"),
]

CLI = [sys.executable, "-m", "sbd_stream"]
SAMPLING = ["--pixel-size", "0.06", "--counts-per-px", "0.45"]
# both ways fail() prints: rich red on a colour terminal (secho), plain under NO_COLOR (echo)
COLOURS = {"colour": {"TERM": "xterm-256color"}, "no-colour": {"NO_COLOR": "1", "TERM": "dumb"}}


def _run(args: list[str], env: dict[str, str], closed: bool = False) -> tuple[int, str]:
    """(exit status, stdout) of ``sbd-stream ARGS`` with stderr on ``/dev/full`` (or closed: ``2>&-``)."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TERM")} | env

    def preexec() -> None:
        hup_default()
        if closed:
            os.close(2)

    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [*CLI, *args],
            stdout=subprocess.PIPE,
            stderr=None if closed else full,
            preexec_fn=preexec,
            env=full_env,
            timeout=150,  # a hang fails the test, never the suite
        )
    return proc.returncode, proc.stdout.decode("utf-8", "backslashreplace")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("colour", sorted(COLOURS))
def test_a_missing_input_ends_with_status_2_when_stderr_is_full(tmp_path: Path, colour: str) -> None:
    """The ``error:`` line cannot be written; the status still says "input error" (was 1)."""
    out = tmp_path / "out.h5"
    rc, stdout = _run(["denoise", str(tmp_path / "missing.h5"), str(out), *SAMPLING], COLOURS[colour])
    assert rc == 2
    assert stdout == "" and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no partial, no lock left behind


@pytest.mark.timeout(300)
def test_an_input_that_is_not_hdf5_ends_with_status_2_when_stderr_is_full(tmp_path: Path) -> None:
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    inp.write_text("not an HDF5 file\n")
    rc, stdout = _run(["denoise", str(inp), str(out), *SAMPLING], COLOURS["colour"])
    assert rc == 2 and stdout == "" and not out.exists()


@pytest.mark.timeout(300)
def test_an_output_that_exists_ends_with_status_2_when_stderr_is_full(tmp_path: Path) -> None:
    """A refusal after the input was read: the existing output is left as it was."""
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    inp.write_bytes(b"")
    out.write_bytes(b"keep me")
    rc, _ = _run(["denoise", str(inp), str(out), *SAMPLING], COLOURS["no-colour"])
    assert rc == 2 and out.read_bytes() == b"keep me"


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "args", [["denoise", "--bogus"], ["denoise"]], ids=["unknown-option", "missing-arguments"]
)
def test_a_usage_error_click_cannot_print_ends_with_status_2(args: list[str]) -> None:
    """click's own report of a usage error fails the same way; its status is 2, as printed (was 1)."""
    rc, stdout = _run(args, COLOURS["colour"])
    assert rc == 2 and stdout == ""


@pytest.mark.timeout(300)
def test_a_missing_input_ends_with_status_2_when_stderr_is_closed(tmp_path: Path) -> None:
    """``2>&-``: Python starts with no ``sys.stderr`` at all; the line is dropped, the status kept."""
    rc, stdout = _run(
        ["denoise", str(tmp_path / "missing.h5"), str(tmp_path / "out.h5"), *SAMPLING],
        COLOURS["colour"],
        closed=True,
    )
    assert rc == 2 and stdout == ""
