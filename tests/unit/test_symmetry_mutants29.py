"""The orientation sets and their inverse maps pinned (mutation round h29, engines/symmetry.py).

test_symmetry.py checks how many orientations each set has and equivariance over 4 and 8; the
2-orientation set (an engine trained with flips only, sbd-unet4-detector) could hold any second
orientation, and a mean divided by the wrong count was invisible to equivariance.
"""

from __future__ import annotations

import pytest
import torch

from sbd_stream.engines.symmetry import (
    ORIENTATIONS,
    orientations,
    symmetrised,
    trained_orientations,
    turn,
    unturn,
)


def _lopsided(x: torch.Tensor) -> torch.Tensor:
    """Orientation-dependent on purpose: a shift down and a ramp across the columns."""
    ramp = torch.linspace(0, 1, x.shape[-1], dtype=x.dtype)
    return torch.roll(x, 1, dims=-2) * (1 + ramp) + x.cumsum(-1) * 0.01


def test_two_orientations_are_the_frame_as_is_and_mirrored_left_right() -> None:
    """``--orientations 2``: as is and mirrored left-right (on a flips-only engine too; it gets its four
    flips only for 4 or 8, test_h30_klein_four.py). Mutant: a half turn."""
    assert orientations(2) == [(0, False), (0, True)]
    assert orientations(4) == [(k, False) for k in range(4)]
    assert sorted(orientations(8)) == sorted({(k, m) for k in range(4) for m in (False, True)})
    x = torch.rand(2, 10, 14, dtype=torch.float64)
    mirrored = symmetrised(_lopsided, x.flip(-1), 2)
    torch.testing.assert_close(mirrored, symmetrised(_lopsided, x, 2).flip(-1))


@pytest.mark.parametrize("n", ORIENTATIONS)
def test_every_orientation_is_undone_exactly(n: int) -> None:
    """``unturn`` inverts ``turn`` on a non-square frame, and the mean of the identity is the frame itself
    (divided by the number of orientations used). Mutants: the turn undone the wrong way; flip and turn
    undone in the wrong order; the mean over 8 whatever the count."""
    x = torch.rand(2, 6, 9, dtype=torch.float64)
    for k, mirror in orientations(n):
        y = turn(x, k, mirror)
        assert y.shape[-2:] == ((6, 9) if k % 2 == 0 else (9, 6))
        torch.testing.assert_close(unturn(y, k, mirror), x, rtol=0, atol=0)
    torch.testing.assert_close(symmetrised(lambda t: t, x, n), x)
    torch.testing.assert_close(symmetrised(lambda t: 2 * t + 1, x, n), 2 * x + 1)


def test_turn_is_quarter_turns_then_a_left_right_mirror() -> None:
    """``turn(x, 1, True)``: a quarter turn counter-clockwise (``torch.rot90``), then columns reversed."""
    x = torch.arange(6.0).reshape(1, 2, 3)
    torch.testing.assert_close(turn(x, 1, True), torch.rot90(x, 1, (-2, -1)).flip(-1))
    torch.testing.assert_close(turn(x, 0, True), x.flip(-1))


def test_an_augmentation_recorded_at_the_top_level_counts_too() -> None:
    """Cards record ``training.config.augment``; older ones ``training.augment``: both are read."""
    assert trained_orientations({"augment": {"flips": True}}) == 4  # the four flips (h30)
    assert trained_orientations({"augment": {"flips": False}}) == 1
    assert trained_orientations({"config": {}, "augment": {"flips": True, "right_angles": True}}) == 8
