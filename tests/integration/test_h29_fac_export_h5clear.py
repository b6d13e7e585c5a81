"""A facility engineer's audit (h29): `export --to npy`'s JSON sidecar obeys the output's rules, export
refuses inputs that are no file, and the h5clear helper is one line per file that cannot be cleared.

Real HDF5 recordings (the Recorder), the real CLI (Typer's runner) and the helper as a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from sbd_stream.cli import app
from sbd_stream.config import RecordSettings
from sbd_stream.metrics import Metrics
from sbd_stream.sinks.recorder import Recorder, RecordItem

pytestmark = pytest.mark.integration

SHAPE = (12, 10)


def _record(directory: Path, n: int = 4) -> Path:
    sampling = {"pixel_size_A": 0.06, "dose_e_per_A2": 125.0, "counts_per_px": 0.45}
    rec = Recorder(RecordSettings(directory=directory), Metrics(), sampling=sampling)
    for q in range(n):
        frame = np.random.default_rng(q).poisson(0.45, SHAPE).astype(np.uint16)
        rec.write(RecordItem("raw", "acq", q, 100.0 + 0.025 * q, frame))
    rec.close_all()
    return directory / "acq.nxs"


def _export(*args: str):
    return CliRunner().invoke(app, ["export", *args])


def test_an_npy_export_named_json_is_refused_not_overwritten_by_its_own_sidecar(tmp_path: Path) -> None:
    """``--out x.json --to npy``: the sidecar (``x.json``) replaced the frames just written, exit 0."""
    rec = _record(tmp_path / "rec")
    res = _export(str(rec), "--to", "npy", "--kind", "raw", "--out", str(tmp_path / "x.json"))
    assert res.exit_code == 2, res.output
    assert "sidecar" in res.output and "same file" in res.output
    assert not (tmp_path / "x.json").exists()


def test_an_existing_sidecar_is_kept_without_overwrite(tmp_path: Path) -> None:
    """A user's ``x.json`` beside ``--out x.npy`` was replaced silently although ``--overwrite`` was
    not given; now refused like an existing output, and replaced with ``--overwrite``."""
    rec = _record(tmp_path / "rec")
    mine = tmp_path / "x.json"
    mine.write_text('{"mine": 1}')
    out = str(tmp_path / "x.npy")
    res = _export(str(rec), "--to", "npy", "--kind", "raw", "--out", out)
    assert res.exit_code == 2, res.output
    assert "x.json exists" in res.output and "--overwrite" in res.output
    assert json.loads(mine.read_text()) == {"mine": 1}
    assert not (tmp_path / "x.npy").exists()
    res = _export(str(rec), "--to", "npy", "--kind", "raw", "--out", out, "--overwrite")
    assert res.exit_code == 0, res.output
    assert json.loads(mine.read_text())["kind"] == "raw"
    assert np.load(out).shape == (4, *SHAPE)


def test_export_of_a_folder_or_a_fifo_is_one_line(tmp_path: Path) -> None:
    """A folder gave HDF5's multi-line read failure; a FIFO blocked in HDF5's open for good (its check
    comes before any open, so this test cannot hang on the fixed code)."""
    folder = tmp_path / "rec.nxs"
    folder.mkdir()
    res = _export(str(folder), "--to", "npy")
    assert res.exit_code == 2 and "is a folder; name a file" in res.output, res.output
    fifo = tmp_path / "pipe.nxs"
    os.mkfifo(fifo)
    res = _export(str(fifo), "--to", "npy")
    assert res.exit_code == 2 and "is a FIFO" in res.output, res.output


def _h5clear(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "sbd_stream.sinks.h5clear", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_h5clear_helper_names_each_bad_file_and_goes_on(tmp_path: Path) -> None:
    """A glob that matched nothing, a folder, a non-HDF5 file or a file cut inside its superblock was
    a traceback (exit 1) and the files after it were not tried; ``-s`` (h5clear's flag) was taken for a
    file name."""
    rec = _record(tmp_path / "rec")
    not_h5 = tmp_path / "notes.nxs"
    not_h5.write_text("not HDF5")
    short = tmp_path / "short.nxs"
    short.write_bytes(rec.read_bytes()[:10])
    missing = tmp_path / "acq*.nxs"
    res = _h5clear("-s", str(missing), str(tmp_path), str(not_h5), str(short), str(rec))
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    errors = res.stderr.strip().splitlines()
    assert len(errors) == 4, res.stderr
    assert errors[0] == f"error: {missing}: No such file or directory"
    assert errors[1].startswith(f"error: {tmp_path}: is a folder")
    assert errors[2] == f"error: {not_h5}: not an HDF5 file (no superblock signature)"
    assert errors[3] == f"error: {short}: cut short inside its superblock"
    assert res.stdout.strip() == f"{rec}: no flags set"  # tried after the failures
    ok = _h5clear("--help")
    assert ok.returncode == 0 and ok.stdout.startswith("usage:")


def test_replay_of_a_recording_without_a_complete_raw_row_is_refused(
    tmp_path: Path, binning_engine_dir: Path
) -> None:
    """Such a replay loaded the engine, sent and recorded nothing and exited 0 in silence, where
    ``replay --offline`` and ``export`` refuse the same file in one line."""
    from sbd_stream.formats.limits import RecordingError
    from sbd_stream.sources.replay import check_recording

    rec = _record(tmp_path / "rec")
    check_recording(rec)  # four complete rows: accepted
    with h5py.File(rec, "r+") as f:
        f["entry/raw/complete"].resize((0,))
    with pytest.raises(RecordingError, match="holds no complete raw frame"):
        check_recording(rec)
    engine = ["--engine", "torch", "--model", str(binning_engine_dir)]
    res = CliRunner().invoke(app, ["replay", str(rec), *engine])
    assert res.exit_code == 2, res.output
    assert "no complete raw frame" in res.output


def test_denoise_refuses_to_overwrite_a_rolled_part_of_its_input(
    tmp_path: Path, binning_engine_dir: Path
) -> None:
    """``denoise REC.h5 REC_0001.h5 --overwrite`` (``record.suffix = ".h5"``: a ``.nxs`` output is
    refused anyway) replaced the recording's second part, its raw frames, with the denoised output,
    exit 0: only the first file was compared with the output."""
    sampling = {"pixel_size_A": 0.06, "dose_e_per_A2": 125.0, "counts_per_px": 0.45}
    settings = RecordSettings(directory=tmp_path, max_file_bytes=20_000, compression="none", suffix=".h5")
    rec = Recorder(settings, Metrics(), sampling=sampling)
    for q in range(12):
        frame = np.random.default_rng(q).poisson(0.45, (32, 32)).astype(np.uint16)
        rec.write(RecordItem("raw", "acq", q, 100.0 + 0.025 * q, frame))
    rec.close_all()
    second = tmp_path / "acq_0001.h5"
    assert second.exists()
    before = second.read_bytes()
    engine = ["--engine", "torch", "--model", str(binning_engine_dir), "--scheduler", "none"]
    res = CliRunner().invoke(app, ["denoise", str(tmp_path / "acq.h5"), str(second), "--overwrite", *engine])
    assert res.exit_code == 2, res.output
    assert "is a rolled part of the input recording" in res.output
    assert second.read_bytes() == before
