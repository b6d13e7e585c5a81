"""Mutation round h29c on sinks/stored_dtype.py: the cast's edges the float16 tests left loose (each test
below failed on a mutant of the module and passes on it as it is)."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest

from sbd_stream.metrics import Metrics
from sbd_stream.sinks.stored_dtype import RECORDED, TORCH_MIN, StoredDtype, as_float16

F16_MAX = 65504.0


def test_a_frame_already_in_the_dtype_is_passed_on_as_it_is() -> None:
    frame = np.ones((4, 4), np.float16)
    assert StoredDtype("float16", Metrics())(frame) is frame


def test_a_pixel_at_the_largest_float16_is_kept_and_not_counted() -> None:
    m = Metrics()
    frame = np.zeros((8, 8), np.float32)
    frame[0, 0], frame[0, 1], frame[0, 2] = F16_MAX, -F16_MAX, 7e4
    out = StoredDtype("float16", m)(frame)
    assert out[0, 0] == F16_MAX and out[0, 1] == -F16_MAX and out[0, 2] == F16_MAX
    assert m.value(RECORDED.metric) == 1


def test_every_pixel_beyond_the_range_is_counted() -> None:
    m = Metrics()
    frame = np.zeros((8, 8), np.float32)
    frame[0, :5] = [7e4, 1e6, -7e4, np.inf, -np.inf]
    StoredDtype("float16", m)(frame)
    assert m.value(RECORDED.metric) == 5


def test_a_nan_frame_within_the_range_is_neither_counted_nor_logged(caplog: pytest.LogCaptureFixture) -> None:
    """NaN fails the min / max range test, so such a frame goes to the clip; no pixel is beyond the range
    there, so nothing is counted and nothing is said (a "0 denoised pixels ... clipped" line before)."""
    m = Metrics()
    frame = np.ones((8, 8), np.float32)
    frame[3, 3] = np.nan
    with caplog.at_level(logging.WARNING, logger="sbd_stream.sinks.stored_dtype"):
        out = StoredDtype("float16", m)(frame)
    assert np.isnan(out[3, 3]) and out[0, 0] == 1.0
    assert m.value(RECORDED.metric) == 0 and not caplog.records


def test_an_empty_frame_casts_to_an_empty_frame() -> None:
    out = StoredDtype("float16", Metrics())(np.zeros((0, 16), np.float32))
    assert out.dtype == np.float16 and out.shape == (0, 16)


def test_a_read_only_frame_is_cast_without_a_warning() -> None:
    """torch.from_numpy warns on read-only memory ("The given NumPy array is not writable"): such a frame
    goes through numpy."""
    frame = np.random.default_rng(0).random((TORCH_MIN // 8, 16), np.float32)
    frame.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = as_float16(frame)
    assert np.array_equal(out, frame.astype(np.float16))
