"""A float16 output of a frame whose only out-of-range pixel is negative: clipped to -65504 and counted.

``sinks/stored_dtype.py``: pixels beyond float16's range "are clipped to the finite range (NaN stays
NaN: it says something else), counted per output (``sbd_recorded_clipped_pixels_total``,
``sbd_published_clipped_pixels_total``) and logged once per output". An undershoot of a denoised frame
is negative. Mutation audit (round 2, SD1): with only the maximum compared to the limit, such a pixel
became -inf, uncounted and unlogged; every existing frame also held a pixel above +65504, so no test
noticed. Real ``StoredDtype`` and ``Metrics``.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from sbd_stream.metrics import Metrics
from sbd_stream.sinks.stored_dtype import PUBLISHED, RECORDED, Output, StoredDtype

F16_MAX = 65504.0


@pytest.mark.parametrize("output", [RECORDED, PUBLISHED], ids=["recorded", "published"])
def test_a_large_negative_pixel_alone_is_clipped_counted_and_logged(
    output: Output, caplog: pytest.LogCaptureFixture
) -> None:
    m = Metrics()
    frame = np.zeros((64, 64), np.float32)
    frame[0, 0], frame[0, 2], frame[5, 5] = -70000.0, -1.5, 1e4  # the only one beyond the range: -7e4
    with caplog.at_level(logging.WARNING, logger="sbd_stream.sinks.stored_dtype"):
        out = StoredDtype("float16", m, output)(frame, "a", 7)
    assert out.dtype == np.float16 and bool(np.isfinite(out).all())
    assert out[0, 0] == -F16_MAX and out[0, 2] == np.float16(-1.5) and out[5, 5] == np.float16(1e4)
    assert m.value(output.metric) == 1
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and output.metric in said[0] and "frame 7 of a" in said[0], said


def test_a_frame_within_the_range_is_neither_clipped_nor_counted() -> None:
    m = Metrics()
    frame = np.full((8, 8), -F16_MAX, np.float32)
    out = StoredDtype("float16", m)(frame)
    assert (out == np.float16(-F16_MAX)).all() and m.value(RECORDED.metric) == 0
