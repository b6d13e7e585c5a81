"""``calibration``'s clamp and its fallback, pinned by number (a mutation round, h31).

docs/likelihood.md states the factor is clamped to 0.25-4x; the existing test read the bounds back from
``CALIBRATION_RANGE``, so a range narrowed to 0.5-2x (a 3x brighter stream scored with rates 1.5x too low)
passed it. A non-positive vacuum level of the rates (a denoiser's output there at or below 0) is no scale:
1, not the clamp's floor.
"""

from __future__ import annotations

import torch

from sbd_stream.compute.vacuum import CALIBRATION_RANGE, calibration


def test_the_factor_is_clamped_to_a_quarter_and_four_as_documented() -> None:
    assert CALIBRATION_RANGE == (0.25, 4.0)
    counts = torch.tensor([0.45 * 3.0, 0.45 / 3.0, 0.45 * 5.0, 0.45 / 5.0])
    got = calibration(counts, torch.full_like(counts, 0.45))
    torch.testing.assert_close(got, torch.tensor([3.0, 1 / 3.0, 4.0, 0.25]))


def test_a_rates_level_at_or_below_zero_gives_one() -> None:
    got = calibration(torch.tensor([0.45, 0.45, 0.0]), torch.tensor([-0.5, -1e-3, 0.0]))
    torch.testing.assert_close(got, torch.ones(3))
