"""Vacuum only along one edge of a frame, off the configured dose: its blocks are vacuum, not "not flat".

The documented use of ``vacuum_mode = estimate`` with the dose check (docs/likelihood.md) is a stream whose
dose differs from the configured one. Off its dose the shipped engine's output ramps over the frame's outer
12-15 px, so every vacuum block along an edge ranked rough; with the vacuum only there the estimator took
specimen and mixed blocks and flagged the frame (audit: "fires off-dose with edge vacuum"): 4 of 4 at 2x,
level right, by ``spread``, ``texture`` and ``rough``. The fix (a block's denoised variance, its rank and
``rough``, leaves out the frame's outer 2/3 of a block, ``vacuum.BORDER_BLOCKS``) is mirrored in
``tests/likelihood_reference.py``. Frames go
through ``BatchStage`` and the service's dose check, as the live service runs them, with the shipped live
CPU engine.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest

from sbd_stream.config import DetectorSettings, LikelihoodSettings
from sbd_stream.engines.denoiser import Denoiser
from sbd_stream.frames import Frame, FrameHeader
from sbd_stream.metrics import Metrics
from sbd_stream.service.batch import BatchStage
from sbd_stream.service.dose_check import dose_check_for

ENGINES = Path(__file__).resolve().parents[2] / "engines"
SIDE = 1024  # detector pixels: 256^2 working pixels at 0.24 A, 12 x 12 blocks of 5 A, 14 chosen
CONFIGURED = 0.45


@pytest.fixture(scope="module", params=["sbd-unet3s2-paper", "sbd-unet3s2-paper-twins"])
def den(request: pytest.FixtureRequest) -> Denoiser:
    """The engine the fix was measured on, and the live CPU engine (``serve``'s CPU default, session 36)."""
    return Denoiser.load("auto", ENGINES / request.param, device="cpu")


def _scene(vacuum_rows: int) -> np.ndarray:
    """Vacuum (1.0) in the top ``vacuum_rows`` detector rows, then columns 2.4 A apart (contrast 1)."""
    yy, xx = np.mgrid[:SIDE, :SIDE]
    img = np.ones((SIDE, SIDE))
    for r in range(vacuum_rows + 20, SIDE, 40):
        for c in range(20, SIDE, 40):
            img += 1.0 * np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * 6.0**2))
    return img


def _run(
    den: Denoiser, img: np.ndarray, mult: float, n: int, seed: int, caplog: pytest.LogCaptureFixture
) -> tuple:
    """(result, metrics, warnings) of ``n`` Poisson frames at ``mult`` x the configured dose."""
    stage = BatchStage(den, DetectorSettings(), LikelihoodSettings(enabled=True))
    counts = np.random.default_rng(seed).poisson(CONFIGURED * mult * img, size=(n, SIDE, SIDE))
    frames = [
        Frame(FrameHeader("edge", i, time.time(), c.shape, "uint16"), c.astype("uint16"))
        for i, c in enumerate(counts)
    ]
    m = Metrics()
    check = dose_check_for(stage, m)
    assert check is not None
    with caplog.at_level(logging.WARNING):
        res = stage.process(frames)
        check.result(res)
    return res, m, [r.getMessage() for r in caplog.records if "not flat" in r.getMessage()]


@pytest.mark.parametrize(("mult", "seed"), [(0.5, 1), (0.6, 2), (2.0, 3)])
def test_edge_vacuum_off_the_dose_is_flat_and_its_level_right(
    den: Denoiser, mult: float, seed: int, caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest
) -> None:
    """200 detector rows of vacuum: 24 whole vacuum blocks (17 %, over the 10 % the estimator needs), all
    in the two top block rows, the first at the frame's edge. Before: 2x 4 of 4 flagged; 0.5x 1-3 of 8."""
    if den.engine.card.name == "sbd-unet3s2-paper-twins" and mult == 0.6:
        # A stated limit (docs/likelihood.md, session 36): the live engine reads this vacuum ``rough``
        # 0.005-0.008 at 0.6-0.8x, inside the band ``rough`` counts in (the engine's own level 0.95 of
        # the counts'), and no bound separates it from flat specimen at 1x (0.0002-0.006): flagged.
        request.node.add_marker(pytest.mark.xfail(strict=True, reason="live engine, 0.6x: see docs"))
    res, m, said = _run(den, _scene(200), mult, 6, seed, caplog)
    assert res.measured_vacuum is not None and res.vacuum_not_flat is not None
    assert res.measured_vacuum == pytest.approx(CONFIGURED * mult, rel=0.03)  # the blocks are vacuum
    assert res.vacuum_not_flat.tolist() == [False] * 6
    assert not [h for h in res.headers if "vacuum_not_flat" in h.meta]
    assert m.vacuum_not_flat_frames._value.get() == 0 and not said
    assert m.dose_mismatch_frames._value.get() == 6  # the dose check still says the dose is off


@pytest.mark.parametrize("mult", [0.5, 2.0, 1.0])
def test_too_little_edge_vacuum_is_still_flagged(
    den: Denoiser, mult: float, caplog: pytest.LogCaptureFixture
) -> None:
    """100 detector rows of vacuum: one row of whole vacuum blocks (8 %, under the 10 %), the chosen
    blocks must mix in specimen: flagged at every dose, counted, warned (by the dose off it)."""
    res, m, said = _run(den, _scene(100), mult, 2, 4, caplog)
    assert res.vacuum_not_flat is not None and res.vacuum_not_flat.tolist() == [True, True]
    assert m.vacuum_not_flat_frames._value.get() == 2 and len(said) == 1
    assert ("too little vacuum" in said[0]) is (mult == 1.0)
