"""Mutation round h29c on service/dose_check.py (``DoseCheck.result``): which frames each counter takes,
which level is checked and what the warning advises (each test below failed on a mutant of the module and
passes on it as it is). A real ``BatchResult`` of a batch of 8x8 frames: the check reads only its arrays.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest

from sbd_stream.config import DetectorSettings, LikelihoodSettings
from sbd_stream.engines.denoiser import Denoiser
from sbd_stream.frames import FrameHeader
from sbd_stream.metrics import Metrics
from sbd_stream.service.batch import BatchResult, BatchStage
from sbd_stream.service.dose_check import DoseCheck, dose_check_for

CONFIGURED = 0.5
ENGINE = Path(__file__).resolve().parents[2] / "engines" / "sbd-unet3s2-paper"


def _result(acq: str, measured: list[float], **arrays: object) -> BatchResult:
    n = len(measured)
    headers = [FrameHeader(acq, i, 0.0, (8, 8), "uint16") for i in range(n)]
    vac = np.array(measured, np.float32)
    kw = {"vacuum": vac, "measured_vacuum": vac, **arrays}
    return BatchResult(headers, [0.0] * n, np.zeros((n, 8, 8), np.float32), **kw)  # type: ignore[arg-type]


def _check(m: Metrics) -> DoseCheck:
    return DoseCheck(DetectorSettings(counts_per_px=CONFIGURED, pixel_size_A=0.05), m)


def test_blank_frames_are_counted_once_each_as_blank_and_as_mismatched_but_not_as_not_flat() -> None:
    m = Metrics()
    blank = np.array([True, False, False])
    not_flat = np.array([True, True, False])
    _check(m).result(_result("a", [1e-8, CONFIGURED, CONFIGURED], blank=blank, vacuum_not_flat=not_flat))
    assert m.value("sbd_blank_frames_total") == 1
    assert m.value("sbd_dose_mismatch_frames_total") == 1  # the blank one; the others are at the dose
    assert m.value("sbd_vacuum_not_flat_frames_total") == 1  # the blank frame's blocks are no evidence


def test_evidence_frames_left_out_are_summed() -> None:
    m = Metrics()
    _check(m).result(_result("a", [CONFIGURED] * 3, evidence_left_out=np.array([2, 0, 1])))
    assert m.value("sbd_evidence_frames_left_out_total") == 3


def test_the_frames_own_level_is_checked_not_the_evidence_sums() -> None:
    """``vacuum`` is the level of the evidence sum the LLR used; ``measured_vacuum`` the frame's own."""
    m = Metrics()
    res = _result("a", [2 * CONFIGURED])
    res.vacuum = np.array([CONFIGURED], np.float32)
    _check(m).result(res)
    assert m.value("sbd_dose_mismatch_frames_total") == 1
    assert m.value("sbd_measured_dose_ratio") == pytest.approx(2)


def test_an_infinite_level_is_no_estimate() -> None:
    m = Metrics()
    _check(m).result(_result("a", [np.inf, -np.inf]))
    assert m.value("sbd_dose_mismatch_frames_total") == 0 and m.value("sbd_measured_dose_ratio") == 0


def test_with_a_fixed_level_the_dose_is_not_checked(caplog: pytest.LogCaptureFixture) -> None:
    m = Metrics()
    check = DoseCheck(DetectorSettings(counts_per_px=CONFIGURED), m, fixed=CONFIGURED)
    with caplog.at_level(logging.WARNING, logger="sbd_stream.service.dose_check"):
        check.result(
            _result("a", [3 * CONFIGURED], blank=np.array([False]), vacuum_not_flat=np.array([False]))
        )
    assert m.value("sbd_fixed_vacuum_mismatch_frames_total") == 1
    assert m.value("sbd_dose_mismatch_frames_total") == 0 and m.value("sbd_measured_dose_ratio") == 0
    assert not caplog.records


def test_one_warning_per_acquisition_whose_dose_flag_is_the_level_over_the_pixel_area(
    caplog: pytest.LogCaptureFixture,
) -> None:
    m = Metrics()
    check = _check(m)
    with caplog.at_level(logging.WARNING, logger="sbd_stream.service.dose_check"):
        check.result(_result("a", [2 * CONFIGURED, 2 * CONFIGURED]))
        check.result(_result("a", [2 * CONFIGURED]))
        check.result(_result("b", [0.25 * CONFIGURED]))
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2 and "acquisition a:" in said[0] and "acquisition b:" in said[1], said
    flags = re.search(r"--counts-per-px ([\d.e+-]+) \(or --dose ([\d.e+-]+)\)", said[0])
    assert flags and float(flags[1]) == pytest.approx(1.0) and float(flags[2]) == pytest.approx(1.0 / 0.05**2)
    assert m.value("sbd_dose_mismatch_frames_total") == 4


def test_a_vacuum_level_left_in_the_settings_of_estimate_mode_does_not_turn_the_dose_check_off() -> None:
    """``vacuum_counts`` is read in ``vacuum_mode = "fixed"`` only (compute/likelihood.py); left in a
    config that estimates, the dose is still checked against the configured detector dose."""
    den = Denoiser.load("auto", ENGINE, device="cpu")
    estimate = BatchStage(den, DetectorSettings(), LikelihoodSettings(enabled=True, vacuum_counts=0.3))
    assert dose_check_for(estimate, Metrics()).fixed is None  # type: ignore[union-attr]
    fixed = LikelihoodSettings(enabled=True, vacuum_mode="fixed", vacuum_counts=0.3)
    assert dose_check_for(BatchStage(den, DetectorSettings(), fixed), Metrics()).fixed == 0.3  # type: ignore[union-attr]
