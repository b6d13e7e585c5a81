"""The bin factor's acceptance rule pinned at its edges (mutation round h29, compute/binning.py).

test_binning.py checks factors well inside and well outside the tolerance; where the edges lie (a
detector a little coarser than the working pixel, the mismatch measured against the working pixel, a
mismatch of exactly the tolerance, a zero pixel size) was free to move.
"""

from __future__ import annotations

import pytest

from sbd_stream.compute.binning import SamplingError, bin_factor


def test_a_detector_pixel_a_little_coarser_than_the_working_pixel_is_served_unbinned() -> None:
    """0.247 A on an engine at 0.24 A: 2.9 % coarser, within the 5 % tolerance, so k = 1 (the network was
    trained with rescaling). Mutant: anything coarser refused."""
    assert bin_factor(0.247, 0.24) == 1


def test_the_mismatch_is_relative_to_the_working_pixel() -> None:
    """k x detector pixel vs working pixel, relative to the working pixel: 0.952 A on 1.0 A is 4.8 % off
    (accepted); measured against the binned detector pixel it would be 5.04 % (refused). Mutant: the
    other way round."""
    assert bin_factor(0.952, 1.0) == 1
    assert bin_factor(0.2856, 0.6) == 2  # 0.5712 A against 0.6 A: 4.8 % short, accepted
    with pytest.raises(SamplingError, match=r"5\.2 % off"):
        bin_factor(0.3156, 0.6)  # k = 2: 0.6312 A, 5.2 % long, refused either way


def test_a_mismatch_of_exactly_the_tolerance_is_within_it() -> None:
    """1.25 A on 1.0 A with a 25 % tolerance (both exact in binary): accepted. Mutant: ``>=``."""
    assert bin_factor(1.25, 1.0, tolerance=0.25) == 1


@pytest.mark.parametrize(("detector", "working"), [(0.0, 0.24), (0.06, 0.0), (-0.06, 0.24)])
def test_a_zero_or_negative_pixel_size_is_a_sampling_error(detector: float, working: float) -> None:
    """Refused with a SamplingError naming both (the service refuses at start), not a ZeroDivisionError.
    Mutant: only negative sizes checked."""
    with pytest.raises(SamplingError, match="must be positive"):
        bin_factor(detector, working)
