"""`sbd-train simulate` refuses an unknown world and an unreachable scheduler in one `error:` line.

Found (session 29, a user of docs/simulation.md): ``--preset nope`` printed click's usage box (5 lines)
where ``train --preset nope`` prints one ``error:`` line (docs/training.md, "Errors": a bad option value is
one line, status 2); ``--scheduler tcp://HOST:PORT`` with no scheduler there ended in ``error: Timed out
trying to connect to tcp://... after 30 s (a damaged or truncated HDF5 file?)``: distributed's timeout is a
plain ``OSError``, which the error handler took for h5py's, blaming the output file. Real Dask, real port.
"""

from __future__ import annotations

import socket
from pathlib import Path

import dask
from typer.testing import CliRunner

from training.cli import app


def _run(*args: str):
    return CliRunner().invoke(app, list(args), env={"SBD_TRACEBACK": ""})


def test_an_unknown_world_is_one_line_naming_the_option(tmp_path: Path) -> None:
    res = _run("simulate", "--preset", "nope", "--out", str(tmp_path / "x.h5"), "--plan")
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert lines == [
        "error: --preset: unknown world 'nope'; choose from tiny, mini, detector, paper, paper-envelope, "
        "paper-optics, paper-twins"
    ], res.stderr


def test_an_unreachable_scheduler_is_named_not_the_file(tmp_path: Path) -> None:
    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        res = _run("simulate", "--preset", "tiny", "--out", str(tmp_path / "x.h5"), "--scheduler", address)
    assert res.exit_code == 2
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.stderr
    assert errors[0].startswith(f"error: --scheduler {address}: cannot reach the Dask scheduler"), errors[0]
    assert "HDF5" not in errors[0]
