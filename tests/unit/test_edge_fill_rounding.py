"""An integer frame's unusable pixels are filled with the mean of the others ROUNDED, not truncated.

``service/edge.py`` ``clean_pixels``: "an integer frame keeps its dtype ...: its fill is the mean
rounded, at 0.45 counts/px the most common count, 0"; a float frame gets "the mean of the others
itself". At 0.45 counts/px rounding and truncating agree, which is all the hot-pixel tests used.
Mutation audit (round 2, ED7): ``int(fill)`` for ``round(fill)`` survived, so a hot pixel of a frame
at 0.9 counts/px became 0 instead of 1. Frames built so the mean of the other pixels is known exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

from sbd_stream.service.edge import clean_pixels, hot_threshold

SIDE = 100
HOT = (5, 5)


def _frame(mean_tenths: int, dtype: str) -> np.ndarray:
    """SIDE^2 pixels: the hot one, and the others 0 / 1 / 2 with a mean of ``mean_tenths`` / 10 (+- 1e-4)."""
    others = np.zeros(SIDE * SIDE - 1, np.int64)
    total = round(mean_tenths * (SIDE * SIDE - 1) / 10)
    twos = max(0, total - others.size)
    others[:twos] = 2
    others[twos : total - twos] = 1
    assert others.sum() == total
    flat = np.insert(np.random.default_rng(mean_tenths).permutation(others), HOT[0] * SIDE + HOT[1], 0)
    data = flat.reshape(SIDE, SIDE).astype(dtype)
    data[HOT] = min(4000, np.iinfo(data.dtype).max) if data.dtype.kind in "iu" else 4000  # uint8: 255
    data.flags.writeable = False
    return data


@pytest.mark.parametrize("dtype", ["uint16", "uint32", "int32", "uint8"])
@pytest.mark.parametrize(("mean_tenths", "fill"), [(9, 1), (6, 1), (4, 0), (16, 2), (14, 1)])
def test_a_hot_pixel_of_an_integer_frame_gets_the_rounded_mean(
    dtype: str, mean_tenths: int, fill: int
) -> None:
    data = _frame(mean_tenths, dtype)
    others = np.delete(data.ravel(), HOT[0] * SIDE + HOT[1]).astype(np.float64)
    assert abs(others.mean() - mean_tenths / 10) < 1e-3
    clean, meta = clean_pixels(data, hot_threshold(mean_tenths / 10))
    assert sum(meta.values()) == 1, meta
    assert clean.dtype == data.dtype and int(clean[HOT]) == fill == round(others.mean())
    np.testing.assert_array_equal(np.delete(clean.ravel(), HOT[0] * SIDE + HOT[1]), others)


def test_a_float_frame_gets_the_mean_itself() -> None:
    data = _frame(9, "float32")
    others = np.delete(data.ravel(), HOT[0] * SIDE + HOT[1]).astype(np.float64)
    clean, _ = clean_pixels(data, hot_threshold(0.9))
    assert clean.dtype == np.float32 and clean[HOT] == pytest.approx(others.mean(), rel=1e-6)
