"""``ensemble`` for every request on every kind of card (a mutation round, h31).

The stage tests asked an engine trained without flips only for 8 orientations: one that averaged such an
engine over 2 (as is and mirrored, an orientation it never saw) for ``--orientations 2`` passed them.
"""

from __future__ import annotations

import pytest

from sbd_stream.engines.symmetry import FLIPS, ensemble, orientations

FLIPS_ONLY = {"augment": {"flips": True, "right_angles": False}}
NO_FLIPS = {"augment": {"flips": False, "right_angles": False}}
RIGHT_ANGLES = {"augment": {"flips": True, "right_angles": True}}


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_each_card_gets_only_the_orientations_it_was_trained_in(n: int) -> None:
    assert ensemble(n, NO_FLIPS) == [(0, False)]
    assert ensemble(n, {"config": NO_FLIPS}) == [(0, False)]
    assert ensemble(n, RIGHT_ANGLES) == orientations(n)
    assert ensemble(n, {}) == orientations(n)  # a card that does not say: the request stands
    assert ensemble(n, FLIPS_ONLY) == (orientations(n) if n <= 2 else list(FLIPS))


def test_the_flips_are_as_is_mirrored_and_half_turned() -> None:
    assert FLIPS == [(0, False), (0, True), (2, False), (2, True)]
