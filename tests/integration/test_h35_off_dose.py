"""Offline ``denoise`` measures the frames' vacuum level against the stated dose (service/offline_dose.py).

Audit h35 D7: frames at 0.45 counts/px denoised with ``--counts-per-px 0.9`` came back 38 % too bright
(15.4 instead of 35.7 dB) without a word, where ``serve`` says "measured vacuum level ... is 0.50x the
configured". Real HDF5 files through the command and both of its paths (``--scheduler none``: the
single-process ``denoise_file``; ``local`` with one chunk: the Dask job's client in-process).
"""

from __future__ import annotations

import logging
import re
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers_offline import SBD

from sbd_stream.config import DenoiseSettings
from sbd_stream.service import offline_dask as od

pytestmark = pytest.mark.integration

SHAPE = (384, 384)  # 0.060 A: 96 x 96 working pixels of the test engine (0.24 A), 4 x 4 blocks of 5 A


def _half_vacuum(n: int, level: float, seed: int = 0) -> np.ndarray:
    """``n`` Poisson frames at ``level`` counts/px: the left half vacuum, the right half a lattice of
    columns (2 A apart) in a weaker background."""
    y, x = np.mgrid[: SHAPE[0], : SHAPE[1]] * 0.06
    lattice = 0.3 + 3.0 * np.exp(-((np.sin(np.pi * y / 2) ** 2 + np.sin(np.pi * x / 2) ** 2) / 0.3))
    rate = np.where(x < SHAPE[1] * 0.06 / 2, 1.0, lattice) * level
    return np.random.default_rng(seed).poisson(rate, (n, *SHAPE)).astype(np.uint16)


def _no_vacuum(n: int, seed: int = 1) -> np.ndarray:
    """Frames filled by columns 1.5 A apart, 0.25 counts/px on average: no flat block anywhere, and the
    level of any block far under 0.45 (a check without the flatness rule says "0.56x the stated")."""
    y, x = np.mgrid[: SHAPE[0], : SHAPE[1]] * 0.06
    rate = 0.05 + 1.2 * np.exp(-((np.sin(np.pi * y / 1.5) ** 2 + np.sin(np.pi * x / 1.5) ** 2) / 0.3))
    return np.random.default_rng(seed).poisson(rate, (n, *SHAPE)).astype(np.uint16)


def _stack(path: Path, frames: np.ndarray, counts_per_px: float | None = None) -> Path:
    with h5py.File(path, "w") as f:
        f["frames"] = frames
        f.attrs["pixel_size_A"] = 0.06
        if counts_per_px is not None:
            f.attrs["counts_per_px"] = counts_per_px
    return path


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "measured vacuum level" in r.getMessage()]


@pytest.mark.parametrize("scheduler", ["none", "local"])
def test_a_wrong_stated_dose_is_warned_once_with_the_measured_level_and_recorded(
    binning_engine_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, scheduler: str
) -> None:
    inp = _stack(tmp_path / "in.h5", _half_vacuum(4, 0.45), counts_per_px=0.9)  # the file's own dose: wrong
    es = DenoiseSettings(engine="onnxruntime", model=str(binning_engine_dir), batch_frames=2)
    with caplog.at_level(logging.WARNING):
        summary = od.denoise(inp, tmp_path / "out.h5", None, es, scheduler=scheduler)
    warned = _warnings(caplog)
    assert len(warned) == 1, warned  # one per job, not one per frame or batch
    said = re.search(r"level ([\d.]+) counts per detector pixel .* is ([\d.]+)x the stated 0.9 ", warned[0])
    assert said and float(said[1]) == pytest.approx(0.45, rel=0.05), warned[0]
    assert float(said[2]) == pytest.approx(0.5, rel=0.05)
    fix = re.search(r"--counts-per-px ([\d.]+) \(or --dose ([\d.]+)\)", warned[0])
    assert fix and fix[1] == said[1]  # the flag to fix, with the level measured
    assert summary["dose_mismatch"] is True and summary["dose_mismatch_frames"] == 4
    assert summary["measured_vacuum_counts"] == pytest.approx(0.45, rel=0.05)
    with h5py.File(tmp_path / "out.h5", "r") as f:
        assert bool(f.attrs["dose_mismatch"]) and f.attrs["dose_mismatch_frames"] == 4
        assert f.attrs["measured_vacuum_counts"] == pytest.approx(0.45, rel=0.05)
        assert np.allclose(f["measured_vacuum"][:], 0.45, rtol=0.08)


@pytest.mark.parametrize("scheduler", ["none", "local"])
def test_the_right_dose_is_not_warned_and_recorded_as_matching(
    binning_engine_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, scheduler: str
) -> None:
    inp = _stack(tmp_path / "in.h5", _half_vacuum(4, 0.45), counts_per_px=0.45)
    es = DenoiseSettings(engine="onnxruntime", model=str(binning_engine_dir), batch_frames=2)
    with caplog.at_level(logging.WARNING):
        summary = od.denoise(inp, tmp_path / "out.h5", None, es, scheduler=scheduler)
    assert _warnings(caplog) == []
    assert summary["dose_mismatch"] is False and summary["measured_vacuum_frames"] == 4
    assert summary["measured_dose_ratio"] == pytest.approx(1.0, abs=0.05)
    with h5py.File(tmp_path / "out.h5", "r") as f:
        assert not f.attrs["dose_mismatch"] and f.attrs["measured_vacuum_frames"] == 4


def test_frames_without_vacuum_are_not_measured_and_not_warned(
    binning_engine_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inp = _stack(tmp_path / "in.h5", _no_vacuum(3), counts_per_px=0.45)
    es = DenoiseSettings(engine="onnxruntime", model=str(binning_engine_dir), batch_frames=2)
    with caplog.at_level(logging.WARNING):
        summary = od.denoise(inp, tmp_path / "out.h5", None, es, scheduler="none")
    assert _warnings(caplog) == []
    assert summary["measured_vacuum_frames"] == 0 and summary["measured_vacuum_counts"] is None
    assert summary["dose_mismatch"] is False
    with h5py.File(tmp_path / "out.h5", "r") as f:
        assert np.isnan(f["measured_vacuum"][:]).all()
        assert "measured_vacuum_counts" not in f.attrs and not f.attrs["dose_mismatch"]


def test_the_command_says_which_flag_to_fix_once(binning_engine_dir: Path, tmp_path: Path) -> None:
    """``sbd-stream denoise`` itself: a stack stating no dose (the paper's 125 e/A^2 assumed: 0.45 at
    0.06 A) holding 0.9 counts/px in vacuum."""
    inp = _stack(tmp_path / "in.h5", _half_vacuum(2, 0.9))
    out = tmp_path / "out.h5"
    cmd = [SBD, "denoise", str(inp), str(out), "--model", str(binning_engine_dir), "--engine", "onnxruntime"]
    run = subprocess.run([*cmd, "--scheduler", "none"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = [ln for ln in run.stderr.splitlines() if "measured vacuum level" in ln]
    assert len(lines) == 1, run.stderr
    fix = re.search(r"--counts-per-px ([\d.]+)", lines[0])
    assert fix and float(fix[1]) == pytest.approx(0.9, rel=0.05)
    assert '"dose_mismatch": true' in run.stdout


def test_the_python_api_warns_once_per_denoiser_and_returns_the_levels(
    binning_engine_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from sbd_stream.service.frames import FrameDenoiser

    engine = {"model": binning_engine_dir, "engine": "onnxruntime"}
    fd = FrameDenoiser(0.06, counts_per_px=0.9, orientations=1, **engine)
    with caplog.at_level(logging.WARNING):
        res = fd.process(_half_vacuum(3, 0.45))
    warned = _warnings(caplog)
    assert len(warned) == 1 and "counts_per_px=0.4" in warned[0], warned
    assert res.measured_vacuum is not None and np.allclose(res.measured_vacuum, 0.45, rtol=0.08)
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # a loop of calls on one denoiser: said once, levels each time
        again = [fd.process(_half_vacuum(1, 0.45)) for _ in range(3)]
    assert _warnings(caplog) == []
    assert all(r.measured_vacuum is not None and np.isfinite(r.measured_vacuum).all() for r in again)
    caplog.clear()
    right = FrameDenoiser(0.06, counts_per_px=0.45, denoiser=fd.denoiser, orientations=1)
    with caplog.at_level(logging.WARNING):
        right.process(_half_vacuum(3, 0.45))
    assert _warnings(caplog) == []
