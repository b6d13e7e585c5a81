"""Which frames ``vacuum_mode = fixed`` flags: only those whose own level is reliable and off the fixed one.

docs (``service/frame_flags.py``): "**Fixed level off** (``vacuum_mode = fixed``): where a frame's own
estimate is reliable (its blocks are flat), it differs from the fixed level by more than ``FIXED_BAND``"
(0.9-1.1x, both sides); "**Vacuum not flat** (``vacuum_mode = estimate``)": the mark is about the estimated
level the LLR uses, which fixed mode does not use. A blank frame is a blank frame, not a level mismatch.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from test_blank_frames import _checked

from sbd_stream.config import DetectorSettings, LikelihoodSettings
from sbd_stream.engines.denoiser import Denoiser
from sbd_stream.frames import Frame, FrameHeader
from sbd_stream.service.batch import BatchStage

SHAPE = (256, 256)
ENGINE = Path(__file__).resolve().parents[2] / "engines" / "sbd-unet3s2-paper"


@pytest.fixture(scope="module")
def den() -> Denoiser:
    """The shipped live CPU engine: its vacuum output is flat, as a real one's."""
    return Denoiser.load("auto", ENGINE, device="cpu")


def _frames(doses: list[float], acq: str = "acq", vacuum: bool = True) -> list[Frame]:
    """Vacuum in the top half and columns below (``vacuum``), or columns everywhere."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    img = np.ones(SHAPE)
    for r in range(SHAPE[0] // 2 + 20 if vacuum else 20, SHAPE[0], 40):
        for c in range(20, SHAPE[1], 40):
            img += 1.0 * np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * 6.0**2))
    return [
        Frame(FrameHeader(acq, i, time.time(), SHAPE, "uint16"), rng.poisson(d * img).astype("uint16"))
        for i, d in enumerate(doses)
    ]


def _run(den: Denoiser, fixed: float, frames: list[Frame], caplog: pytest.LogCaptureFixture) -> tuple:
    stage = BatchStage(den, DetectorSettings(), LikelihoodSettings(enabled=True, vacuum_mode="fixed",
                                                                   vacuum_counts=fixed))  # fmt: skip
    res, m = _checked(stage, frames, caplog)  # through the service's dose check, warnings captured
    return res, m, [r.getMessage() for r in caplog.records]


def test_a_fixed_level_20_percent_too_low_is_counted_and_warned(
    den: Denoiser, caplog: pytest.LogCaptureFixture
) -> None:
    """Frames at 0.45 against a fixed 0.36 (1.25x, above the band's 1.1x): as wrong as 20 % too high."""
    _, m, said = _run(den, 0.36, _frames([0.45, 0.45]), caplog)
    assert m.fixed_vacuum_mismatch_frames._value.get() == 2
    fixed = [s for s in said if "fixed likelihood vacuum_counts" in s]
    assert len(fixed) == 1 and "Set vacuum_counts = 0.4" in fixed[0]


def test_a_frame_without_vacuum_is_no_fixed_mismatch_nor_marked_not_flat_in_fixed_mode(
    den: Denoiser, caplog: pytest.LogCaptureFixture
) -> None:
    """Its own estimate takes specimen (~20 % high): not reliable, so no "fixed level off" for a right fixed
    level, and no ``vacuum_not_flat`` mark or warning (that is about the estimated level fixed mode does
    not use)."""
    res, m, said = _run(den, 0.45, _frames([0.45, 0.45], vacuum=False), caplog)
    assert res.vacuum_not_flat is not None and res.vacuum_not_flat.all()  # the estimate is not reliable
    assert m.fixed_vacuum_mismatch_frames._value.get() == 0
    assert not [s for s in said if "fixed likelihood vacuum_counts" in s]
    assert not [h for h in res.headers if "vacuum_not_flat" in h.meta]
    assert not [s for s in said if "not flat" in s]


def test_a_blank_frame_is_blank_not_a_fixed_level_mismatch(
    den: Denoiser, caplog: pytest.LogCaptureFixture
) -> None:
    """A frame without beam has no level to compare: counted blank, not in the fixed mismatches."""
    res, m, _ = _run(den, 0.45, _frames([0.45, 0.0, 0.45]), caplog)
    assert res.blank is not None and res.blank.tolist() == [False, True, False]
    assert res.headers[1].meta.get("blank") is True
    assert m.blank_frames._value.get() == 1
    assert m.fixed_vacuum_mismatch_frames._value.get() == 0
