"""The demo scores its sample of frames whatever the series' first number and dose (run_demo, loopback)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_settings

from sbd_stream.compute.quality import PAPER_COUNTS_PER_PX
from sbd_stream.engines.denoiser import Denoiser
from sbd_stream.service.demo import run_demo
from sbd_stream.sources.emulator import EmulatorSettings

pytestmark = pytest.mark.integration


def test_demo_scores_from_first_seq_at_another_dose(tmp_path: Path, denoiser: Denoiser) -> None:
    """``emulate --first-seq 1000`` numbers the frames 1000...: the scored sample was taken as 0... and
    no frame was scored (every PSNR null). At 1.8 counts/px the paper metric's frames are scaled by
    0.45 / 1.8 (``paper_psnr_scale``); unscaled, every clamped pixel matched and the score read null."""
    s = make_settings(tmp_path, "tcp://127.0.0.1:1")
    s.record.enabled = False
    s.detector.counts_per_px = 1.8
    emu = EmulatorSettings(
        endpoint="tcp://127.0.0.1:*", shape=(64, 64), n_frames=8, rate_hz=100, dose=1.8, first_seq=1000
    )
    summary = run_demo(s, denoiser, emu)
    assert summary["frames_published_received"] == 8 and summary["psnr_frames"] == 8
    assert summary["paper_psnr_scale"] == pytest.approx(PAPER_COUNTS_PER_PX / 1.8)
    assert summary["paper_psnr_raw_db"] is not None and summary["psnr_raw_db"] is not None


@pytest.mark.timeout(180)
def test_demo_warns_once_when_its_frames_hold_only_vacuum(
    tmp_path: Path, tiny_engine_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``--source DATASET.h5`` frames with no specimen in them: the PSNR would score a flat truth."""
    import h5py
    import numpy as np
    from typer.testing import CliRunner

    from sbd_stream.cli import app

    source = tmp_path / "vacuum.h5"
    with h5py.File(source, "w") as f:
        f["images"] = np.ones((2, 64, 64), np.float32)
        f.attrs["pixel_size_A"] = 0.060
    args = ["demo", "--source", str(source), "--shape", "64x64", "--frames", "4", "--rate", "50"]
    args += ["--pixel-size", "0.06", "--model", str(tiny_engine_dir), "--engine", "torch", "--no-record"]
    args += ["--no-likelihood"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    said = [r.getMessage() for r in caplog.records if "only vacuum" in r.getMessage()]
    assert len(said) == 1 and "vacuum.h5: the 64x64 frames hold (almost) no specimen" in said[0], said
