"""``_frame_scale``, the evidence sum's calibration over the whole frame, on its own (a mutation round, h31).

The end-to-end tests score frames whose pixels are all finite and whose scale is near 1, so a factor
that summed the rates over masked pixels too (a pixel whose count was NaN still adding its rate), read a
NaN rate as "no scale" for the whole frame, or was not clamped (and infinite for all-zero rates) passed
them. Each of these moves every evidence-scored column's LLR of that frame.
"""

from __future__ import annotations

import torch

from sbd_stream.compute.likelihood_inputs import valid_pixels
from sbd_stream.compute.scoring import _frame_scale


def _scale(scored: torch.Tensor, rates: torch.Tensor) -> float:
    return float(_frame_scale(scored[None], rates[None], valid_pixels(scored[None], rates[None]))[0])


def test_the_scale_is_the_counts_over_the_rates_on_the_pixels_finite_in_both() -> None:
    rates = torch.full((16, 16), 0.5)
    scored = rates * 1.2
    assert abs(_scale(scored, rates) - 1.2) < 1e-6
    hole = scored.clone()
    hole[:4] = float("nan")  # counts unknown there: their rates are left out too
    big = rates.clone()
    big[:4] = 50.0
    assert abs(_scale(hole, big) - 1.2) < 1e-6
    nan_rate, counted = rates.clone(), scored.clone()
    nan_rate[0, 0], counted[0, 0] = float("nan"), 500.0  # a rate unknown there: its count left out too
    assert abs(_scale(counted, nan_rate) - 1.2) < 1e-6


def test_the_scale_is_clamped_and_one_where_unknown() -> None:
    rates = torch.full((16, 16), 0.5)
    assert _scale(rates * 10, rates) == 4.0
    assert _scale(rates / 10, rates) == 0.25
    assert _scale(rates, torch.zeros_like(rates)) == 1.0  # all-zero rates: no scale, not infinite
