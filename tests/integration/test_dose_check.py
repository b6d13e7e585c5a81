"""The measured dose against the configured one (sbd_stream/service/dose_check.py), through a real pipeline.

An auditor fed flat Poisson frames at 0.9 counts/px to a service configured for 0.45: the denoised
vacuum came back at ~0.5 (the network is normalised by the configured dose) while the llr header said
``meta.vacuum_counts = 0.899``, with no warning and no metric.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import wait_until

from sbd_stream.config import DetectorSettings, load_settings
from sbd_stream.engines.denoiser import Denoiser
from sbd_stream.frames import Frame, FrameHeader
from sbd_stream.metrics import Metrics
from sbd_stream.service.batch import BatchResult
from sbd_stream.service.build import build_pipeline
from sbd_stream.service.dose_check import DOSE_BAND, DoseCheck

pytestmark = pytest.mark.integration

BASE = {
    "publish": {"enabled": False},
    "record": {"enabled": False},
    "metrics": {"enabled": False},
    "lanes": {"live": False},  # one lane: every frame denoised, in order
    "denoise": {"batch_frames": 2, "batch_timeout_ms": 1.0},
}


def _frame(acq: str, seq: int, level: float, rng: np.random.Generator) -> Frame:
    data = rng.poisson(level, (256, 256)).astype(np.uint16)
    return Frame(FrameHeader(acq, seq, time.time(), (256, 256), "uint16"), data)


def _run(binning_engine_dir: Path, frames: list[Frame], **likelihood) -> Metrics:
    """The frames through a pipeline configured for 0.45 counts per 0.060 A pixel (the engine bins 4x4)."""
    den = Denoiser.load("torch", binning_engine_dir, device="cpu")
    lk = {"enabled": True, **likelihood}
    s = load_settings(overrides={**BASE, "denoise": {**BASE["denoise"], "likelihood": lk}})
    assert s.detector.vacuum_counts == pytest.approx(0.45)
    pipe = build_pipeline(s, den, source=None)
    pipe.start()
    try:
        for f in frames:
            pipe.handle_frame(f)
        assert wait_until(lambda: pipe.metrics.value("sbd_frames_denoised_total") == len(frames), 120)
    finally:
        pipe.stop()
    return pipe.metrics


def test_a_stream_at_twice_the_configured_dose_is_counted_shown_and_warned_once_per_acquisition(
    binning_engine_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(7)
    frames = [_frame("right", i, 0.45, rng) for i in range(2)]  # the configured dose: never counted
    frames += [_frame("bright", i, 0.9, rng) for i in range(3)] + [_frame("dim", 0, 0.2, rng)]
    with caplog.at_level(logging.WARNING, logger="sbd_stream.service.dose_check"):
        m = _run(binning_engine_dir, frames)
    assert m.value("sbd_dose_mismatch_frames_total") == 4
    assert m.value("sbd_measured_dose_ratio") == pytest.approx(0.2 / 0.45, rel=0.1)  # the last frame's
    warned = [r.getMessage() for r in caplog.records if r.name == "sbd_stream.service.dose_check"]
    assert len(warned) == 2, warned  # one per mismatched acquisition, not one per frame
    bright = next(w for w in warned if "acquisition bright" in w)  # both levels, their ratio, the flags
    said = re.search(r"level ([\d.]+) .* is ([\d.]+)x the configured 0.45 \(125 e/A\^2 at 0.06 A", bright)
    assert said and float(said[1]) == pytest.approx(0.9, rel=0.05)
    assert float(said[2]) == pytest.approx(2, rel=0.05)
    flags = re.search(r"--counts-per-px ([\d.]+) \(or --dose ([\d.]+)\)", bright)
    assert flags and flags[1] == said[1]  # the level measured, and as a dose per area: 0.9 / 0.06^2 = 250
    assert float(flags[2]) == pytest.approx(float(said[1]) / 0.06**2, rel=0.01)


def test_a_fixed_vacuum_is_not_a_measurement(binning_engine_dir: Path) -> None:
    """``vacuum_mode = "fixed"`` reports the configured level back: nothing to compare."""
    rng = np.random.default_rng(8)
    m = _run(binning_engine_dir, [_frame("f", 0, 0.9, rng)], vacuum_mode="fixed", vacuum_counts=0.45)
    assert m.value("sbd_dose_mismatch_frames_total") == 0
    assert m.value("sbd_measured_dose_ratio") == 0


def test_frames_without_an_estimate_are_skipped_and_the_band_is_inclusive() -> None:
    """A frame too small to score reports vacuum 0 (no estimate); a batch without maps, none."""
    m = Metrics()
    check = DoseCheck(DetectorSettings(counts_per_px=0.5), m)
    headers = [FrameHeader("a", i, 0.0, (8, 8), "uint16") for i in range(4)]
    den = np.zeros((4, 8, 8), np.float32)
    check.result(BatchResult(headers, [0.0] * 4, den))  # likelihood off: no vacuum at all
    lo, hi = DOSE_BAND
    vac = np.array([0.0, np.nan, 0.5 * lo, 0.5 * hi], np.float32)
    check.result(BatchResult(headers, [0.0] * 4, den, vacuum=vac))
    assert m.value("sbd_dose_mismatch_frames_total") == 0
    assert m.value("sbd_measured_dose_ratio") == pytest.approx(hi)
    check.result(BatchResult(headers[:1], [0.0], den[:1], vacuum=np.array([0.7], np.float32)))
    assert m.value("sbd_dose_mismatch_frames_total") == 1
    assert m.value("sbd_measured_dose_ratio") == pytest.approx(1.4)
