"""`replay --offline` says which live-replay options it does not take (audit h29 B): `--limit 5`
denoised all 60 frames, exit 0, and `--publish`, `--record-dir`, `--likelihood` ... were dropped the same
way. And `replay` of a folder or a FIFO is one line (audit h29 C): a FIFO blocked for good in HDF5's open,
a folder printed HDF5's dump. Real recordings (the Recorder), the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sbd_stream.cli import app
from sbd_stream.config import RecordSettings
from sbd_stream.metrics import Metrics
from sbd_stream.sinks.recorder import Recorder, RecordItem


@pytest.fixture
def recording(tmp_path: Path) -> Path:
    sampling = {"pixel_size_A": 0.06, "dose_e_per_A2": 125.0, "counts_per_px": 0.45}
    rec = Recorder(RecordSettings(directory=tmp_path / "rec"), Metrics(), sampling=sampling)
    for q in range(6):
        frame = np.random.default_rng(q).poisson(0.45, (32, 32)).astype(np.uint16)
        rec.write(RecordItem("raw", "acq", q, 100.0 + 0.025 * q, frame))
    rec.close_all()
    return tmp_path / "rec" / "acq.nxs"


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--limit", "5"], "--limit does not apply to --offline"),
        (["--publish", "--output", "tcp://127.0.0.1:5999"], "--output, --publish do not apply to --offline"),
        (["--record-dir", "x", "--likelihood"], "--record-dir, --likelihood do not apply to --offline"),
        (["--realtime", "--live", "--wait", "3"], "--realtime, --wait, --live do not apply to --offline"),
    ],
)
def test_live_options_with_offline_are_refused_by_name(
    recording: Path, tmp_path: Path, extra: list[str], named: str
) -> None:
    out = tmp_path / "out.h5"
    res = CliRunner().invoke(app, ["replay", str(recording), "--offline", "--out", str(out), *extra])
    assert res.exit_code == 2, res.output
    assert named in res.output and res.output.count("error:") == 1, res.output
    assert not out.exists()


def test_offline_options_without_offline_are_refused(recording: Path, tmp_path: Path) -> None:
    args = ["replay", str(recording), "--out", str(tmp_path / "o.h5"), "--dask-workers", "2"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    assert "--out, --dask-workers applies to --offline only" in res.output


@pytest.mark.timeout(60)
def test_replay_of_a_folder_or_a_fifo_is_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "d.nxs"
    folder.mkdir()
    fifo = tmp_path / "f.nxs"
    os.mkfifo(fifo)
    for path, why in ((folder, "is a folder; name a file"), (fifo, "is a FIFO (named pipe)")):
        for extra in ([], ["--offline", "--out", str(tmp_path / "o.h5")]):
            res = subprocess.run(  # a subprocess: the FIFO blocked for good before, the timeout says so
                [sys.executable, "-m", "sbd_stream", "replay", str(path), *extra],
                capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
            assert res.returncode == 2, (path, extra, res.stderr)
            assert f"error: {path}: {why}" in res.stderr and "errno" not in res.stderr, res.stderr
