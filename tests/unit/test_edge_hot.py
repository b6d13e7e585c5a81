"""The hot-pixel rule at the edge (sbd_stream/service/edge.py): counts impossible at the configured dose.

An auditor put one pixel at 100-65534 counts into a 0.45 counts/px frame: the denoised frame changed by
> 5 % of vacuum out to 38-474 px and the likelihood map scored a column there as trusted, in vacuum,
with nothing replaced, counted or logged; only a pixel at exactly the dtype's maximum was replaced.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from scipy.stats import poisson

from sbd_stream.frames import Frame
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import FrameHeader
from sbd_stream.service.edge import (
    BRIGHT_KEY,
    HOT_KEY,
    HOT_P,
    NONFINITE_KEY,
    SATURATED_KEY,
    Edge,
    hot_threshold,
    replace_invalid,
    replaced,
)


def _frame(data: np.ndarray, acq: str = "a", seq: int = 3) -> Frame:
    return Frame(FrameHeader(acq, seq, 0.0, data.shape, data.dtype.name, meta={"k": 1}), data)


def _counts(lam: float = 0.45, shape: tuple[int, int] = (256, 256), dtype: str = "uint16") -> np.ndarray:
    return np.random.default_rng(4).poisson(lam, shape).astype(dtype)


@pytest.mark.parametrize(("cpp", "expected"), [(0.45, 27), (0.9, 38), (1e-4, 19), (0.05, 19), (7.2, 140)])
def test_the_threshold_is_the_first_count_impossible_at_ten_times_the_dose(cpp: float, expected: int) -> None:
    """P(X >= k) < 1e-12 at max(10 x dose, 2): 27 at the paper's 0.45; never below 19 (a tiny dose)."""
    k = hot_threshold(cpp)
    lam = max(10 * cpp, 2.0)
    assert k == expected
    assert poisson.sf(k - 1, lam) < HOT_P <= poisson.sf(k - 2, lam)


@pytest.mark.parametrize("value", [100, 500, 4000, 65534])
def test_a_hot_pixel_below_the_dtype_maximum_is_replaced_counted_and_flagged(value: int) -> None:
    raw = _counts()
    raw[200, 200] = value
    m = Metrics()
    f = replace_invalid(_frame(raw), m, counts_per_px=0.45)
    others = np.delete(raw.ravel(), 200 * 256 + 200).astype(np.float64).mean()
    fixed = raw.copy()
    fixed[200, 200] = round(others)
    np.testing.assert_array_equal(f.data, fixed)
    assert f.data.dtype == raw.dtype and raw[200, 200] == value  # the received frame is what is recorded
    assert f.header.meta == {"k": 1, HOT_KEY: 1} and replaced(f) == 1
    assert m.value("sbd_frames_hot_total") == 1 and m.value("sbd_pixels_hot_total") == 1
    assert m.value("sbd_frames_saturated_total") == 0 and m.value("sbd_frames_too_bright_total") == 0


def test_frames_without_hot_pixels_pass_untouched_even_at_four_times_the_dose() -> None:
    """Below the threshold nothing changes (the same object: bit-identical outputs); a frame at 4x the
    configured dose on 2x contrast (lam 3.6) reaches 27 with P 3e-15 a pixel: not mangled either."""
    m = Metrics()
    at_26 = _counts()
    at_26[5, 5] = 26
    for data in (_counts(), at_26, _counts(3.6, (1024, 1024)), _counts(0.45, dtype="float32")):
        frame = _frame(data)
        assert replace_invalid(frame, m, counts_per_px=0.45) is frame
    assert m.value("sbd_frames_hot_total") == 0 and m.value("sbd_frames_too_bright_total") == 0
    hot = _counts()
    hot[1, 1] = 500  # without a configured dose (a caller of the old signature): the old rules only
    assert replace_invalid(_frame(hot)).data is hot


def test_a_frame_far_brighter_than_the_configured_dose_is_counted_not_mangled() -> None:
    """40x the dose: the frame's own mean is far over 5x the configured dose: a wrong dose, not hot pixels."""
    raw = _counts(18.0)
    m = Metrics()
    f = replace_invalid(_frame(raw), m, counts_per_px=0.45)
    n = int(np.count_nonzero(raw >= 27))
    assert f.data is raw and f.header.meta == {"k": 1, BRIGHT_KEY: n} and replaced(f) == 0
    assert m.value("sbd_frames_too_bright_total") == 1 and m.value("sbd_pixels_hot_total") == 0


@pytest.mark.parametrize("side", [256, 512, 1024])
@pytest.mark.parametrize("axis", [0, 1])
def test_a_hot_row_or_column_is_hot_pixels_at_any_frame_size(side: int, axis: int) -> None:
    """A hot column of a 256^2 frame is 0.39 % of its pixels: the earlier "more than 0.1 % is a wrong
    dose" rule left it in place and advised a dose (audit 24); the frame's own dose is right, so it is hot."""
    raw = _counts(shape=(side, side))
    line = (slice(None), side // 2) if axis else (side // 2, slice(None))
    raw[line] = 1000
    m = Metrics()
    f = replace_invalid(_frame(raw), m, counts_per_px=0.45)
    assert f.header.meta == {"k": 1, HOT_KEY: side} and replaced(f) == side
    assert int(f.data[line].max()) == 0  # the mean of the others, 0.45, rounds to 0
    assert m.value("sbd_frames_too_bright_total") == 0


@pytest.mark.parametrize(("scale", "particle"), [(15, 2.0), (20, 1.5), (25, 1.5)])
def test_a_wrong_configured_dose_replaces_no_real_count_even_with_contrast(
    scale: int, particle: float
) -> None:
    """15-31x the configured dose on a specimen with contrast: some real counts reach the threshold; the
    frame's own mean (> 5x the configured dose) says the dose is wrong, so none is replaced (audit 24)."""
    rng = np.random.default_rng(7)
    contrast = np.ones((384, 384))
    contrast[100:200, 100:200] = particle  # a bright particle: a few of its counts reach the threshold
    raw = rng.poisson(0.45 * scale * contrast).astype(np.uint16)
    assert np.count_nonzero(raw >= hot_threshold(0.45)) > 0
    f = replace_invalid(_frame(raw), Metrics(), counts_per_px=0.45)
    assert f.data is raw and replaced(f) == 0 and f.header.meta[BRIGHT_KEY] > 0


def test_float_frames_get_the_rule_and_negative_frames_are_left_alone() -> None:
    raw = _counts(dtype="float32")
    raw[10, 10], raw[20, 20] = 300.5, np.nan
    f = replace_invalid(_frame(raw), Metrics(), counts_per_px=0.45)
    assert f.header.meta == {"k": 1, NONFINITE_KEY: 1, HOT_KEY: 1} and replaced(f) == 2
    good = np.delete(raw.ravel(), [10 * 256 + 10, 20 * 256 + 20]).astype(np.float64).mean()
    assert f.data[10, 10] == f.data[20, 20] == np.float32(good)
    dark = raw - np.float32(0.45)  # dark-subtracted: not counts, no Poisson rule (NaN still replaced)
    g = replace_invalid(_frame(dark), None, counts_per_px=0.45)
    assert g.header.meta == {"k": 1, NONFINITE_KEY: 1} and g.data[10, 10] == dark[10, 10]
    signed = _counts(dtype="int32")
    signed[3, 3], signed[4, 4] = 90, -2
    frame = _frame(signed)
    assert replace_invalid(frame, None, counts_per_px=0.45) is frame


def test_hot_and_saturated_pixels_in_one_frame_are_both_flagged() -> None:
    raw = _counts()
    raw[1, 1], raw[2, 2], raw[3, 3] = 65535, 200, 31
    m = Metrics()
    f = replace_invalid(_frame(raw), m, counts_per_px=0.45)
    assert f.header.meta == {"k": 1, SATURATED_KEY: 1, HOT_KEY: 2} and replaced(f) == 3
    assert f.data[1, 1] == f.data[2, 2] == f.data[3, 3] == 0  # the mean of the others (0.45) rounded
    assert m.value("sbd_pixels_saturated_total") == 1 and m.value("sbd_pixels_hot_total") == 2


def test_the_service_edge_warns_once_per_acquisition(caplog: pytest.LogCaptureFixture) -> None:
    """A stuck pixel is in every frame: one line per acquisition, saying what was done."""
    edge = Edge(Metrics(), counts_per_px=0.45)
    raw = _counts()
    raw[7, 7] = 1000
    with caplog.at_level(logging.WARNING, logger="sbd_stream.service.edge"):
        for acq in ("one", "one", "two"):
            assert edge(_frame(raw, acq)).header.meta[HOT_KEY] == 1
        edge(_frame(_counts(18.0), "one"))
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 3, said
    assert "acquisition one" in said[0] and "1 hot pixel (>= 27 counts" in said[0]
    assert "0.45 counts/px" in said[0] and "sbd_pixels_hot_total" in said[0]
    assert "acquisition two" in said[1]
    assert "not hot pixels but a dose far from" in said[2] and "sbd_frames_too_bright_total" in said[2]
    assert edge.metrics is not None and edge.metrics.value("sbd_frames_hot_total") == 3


@pytest.mark.parametrize("value", [1e15, 1e20, 3e38])
def test_huge_finite_float_pixels_are_filled_with_the_mean_of_the_others(value: float) -> None:
    """A float frame's fill is the mean of its other pixels itself: "sum minus outliers" lost them to
    rounding (1e20: the fill was 0.0, 1e15-1e19: 0.06-0.50 for a mean of 0.45; audit 25 review)."""
    raw = _counts(dtype="float32")
    raw[5, 7] = raw[100, 3] = value
    f = replace_invalid(_frame(raw), Metrics(), counts_per_px=0.45)
    keep = np.ones(raw.shape, bool)
    keep[5, 7] = keep[100, 3] = False
    want = np.float32(raw[keep].mean(dtype=np.float64))
    assert f.header.meta[HOT_KEY] == 2
    assert f.data[5, 7] == want and f.data[100, 3] == want


@pytest.mark.parametrize(
    ("dtype", "gain", "lam"),
    [("uint16", 30, 0.45), ("float32", 30, 0.45), ("float32", 1e6, 0.45), ("uint16", 100, 0.05),
     ("float32", 100, 0.05), ("uint16", 30, 3.0)],
)  # fmt: skip
def test_frames_in_camera_units_are_too_bright_not_blanked_by_the_hot_rule(
    dtype: str, gain: float, lam: float
) -> None:
    """A gain (30 ADU per electron, a gain-normalised stack): every hit reaches the 27-count threshold and
    every other pixel is 0, so the frame's own dose below the threshold is 0, never over 5x: every hit was
    "hot", replaced by the mean of the others (0), and the frame came out blank, exit 0 (audit h30). Now
    nothing is replaced; the frame is counted and warned about as too bright."""
    raw = (np.random.default_rng(5).poisson(lam, (128, 128)) * gain).astype(dtype)
    m = Metrics()
    f = replace_invalid(_frame(raw), m, counts_per_px=0.45)
    n = int(np.count_nonzero(raw >= 27))
    assert f.data is raw and replaced(f) == 0 and f.header.meta == {"k": 1, BRIGHT_KEY: n}
    assert m.value("sbd_frames_too_bright_total") == 1 and m.value("sbd_pixels_hot_total") == 0


@pytest.mark.parametrize("side", [16, 32, 64])
def test_a_hot_column_of_a_small_frame_at_the_configured_dose_is_still_hot(side: int) -> None:
    """The camera-units rule needs both: over 1 % of the pixels at the threshold (a column of a 16^2 frame
    is 6 %) and the rest far below the configured dose; at the dose a hot column stays hot pixels."""
    raw = _counts(shape=(side, side))
    raw[:, 3] = 1000
    f = replace_invalid(_frame(raw), Metrics(), counts_per_px=0.45)
    assert f.header.meta == {"k": 1, HOT_KEY: side} and replaced(f) == side


def test_a_beam_blanked_frame_with_a_hot_pixel_still_has_it_replaced() -> None:
    """No beam (own dose 0, far under the configured one) and one hot pixel: 1 of 65,536 pixels is no
    camera unit; it is replaced as before."""
    raw = np.zeros((256, 256), np.uint16)
    raw[10, 10] = 900
    f = replace_invalid(_frame(raw), Metrics(), counts_per_px=0.45)
    assert f.header.meta == {"k": 1, HOT_KEY: 1} and replaced(f) == 1
