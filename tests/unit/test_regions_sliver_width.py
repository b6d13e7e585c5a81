"""The width ``_absorb_slivers`` judges a particle component by, at thresholds just either side of it.

Rule quoted from ``training/evaluate/regions.py``: "a particle component thinner than ``MIN_PARTICLE_A``
... joins the support when it touches it, else the vacuum"; a component exactly as wide as the threshold
stays particle. The old width, ``2 * max(EDT) - 1``, read every even-width stripe one pixel thin (the
distance transform's greatest depth is ``ceil(w / 2)`` for w = 2k - 1 and 2k alike), so a 4 px stripe at a
3.9 px threshold became vacuum. Each case below fails on that rule.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.evaluate.regions import PARTICLE, SUPPORT, VACUUM, _absorb_slivers

WIDTHS = range(1, 7)


def _stripes(vertical: bool) -> tuple[np.ndarray, dict[int, tuple[slice, slice]]]:
    """Stripes 1..6 px wide, 20 px long, 3 px apart; a support under them when ``vertical`` (they touch
    it: slivers join it), none when horizontal (slivers join the vacuum)."""
    regions = np.full((30, 60), VACUUM, np.uint8)
    where, c = {}, 3
    for w in WIDTHS:
        where[w] = (slice(4, 24), slice(c, c + w))
        c += w + 3
    if vertical:
        regions[24:, :] = SUPPORT
    for sl in where.values():
        regions[sl] = PARTICLE
    if not vertical:
        regions = np.ascontiguousarray(regions.T)
        where = {w: (sl[1], sl[0]) for w, sl in where.items()}
    return regions, where


def _kept(regions: np.ndarray, threshold: float, vertical: bool) -> list[int]:
    """The widths still particle after ``_absorb_slivers`` at ``threshold``; the others must be wholly
    what they join, and nothing else may change."""
    before, where = _stripes(vertical)
    assert (regions == before).all()
    _absorb_slivers(regions, threshold)
    joined = SUPPORT if vertical else VACUUM
    kept = []
    for w, sl in where.items():
        if (regions[sl] == PARTICLE).all():
            kept.append(w)
        else:
            assert (regions[sl] == joined).all(), (w, threshold)
    changed = np.zeros(regions.shape, bool)
    for w, sl in where.items():
        changed[sl] = w not in kept
    assert (regions[~changed] == before[~changed]).all()
    return kept


@pytest.mark.parametrize("vertical", [True, False])
@pytest.mark.parametrize("w", WIDTHS)
def test_a_stripe_is_kept_just_below_its_width_and_absorbed_just_above(w: int, vertical: bool) -> None:
    """At ``w - 0.1`` the stripes of w px and wider stay particle; at ``w + 0.1`` those of w px and
    narrower are slivers. The old rule read each even stripe one pixel short: it absorbed the 2, 4 or 6 px
    stripe just below its own width, and the 2, 4 or 6 px stripe just above the odd width under it."""
    below = _kept(_stripes(vertical)[0], w - 0.1, vertical)
    assert below == [v for v in WIDTHS if v >= w]
    above = _kept(_stripes(vertical)[0], w + 0.1, vertical)
    assert above == [v for v in WIDTHS if v > w]


def test_a_stripe_exactly_at_the_threshold_stays_particle() -> None:
    """ "Thinner than" is strict: at a threshold of exactly 2, 4 or 6 px those stripes stay."""
    for w in (2, 4, 6):
        assert _kept(_stripes(True)[0], float(w), True) == [v for v in WIDTHS if v >= w]


@pytest.mark.parametrize("n", range(2, 7))
def test_a_diagonal_stripe_is_judged_by_its_thickness(n: int) -> None:
    """A 45-degree stripe n px across each row is n / sqrt(2) thick. Just below that (less 0.05 px) the
    n px one stays particle and the (n - 1) px one, (n - 1) / sqrt(2) thick, does not (the old rule read
    n = 2k - 1 and 2k alike: 1.0 for 1 and 2 px, 1.83 for 3 and 4, 3.47 for 5 and 6, so it absorbed the
    n px one every time)."""
    threshold = n / math.sqrt(2) - 0.05
    for across, stays in ((n, True), (n - 1, False)):
        r, c = np.mgrid[:40, :40]
        stripe = (c - r >= 5) & (c - r < 5 + across) & (r >= 3) & (r < 30)
        regions = np.where(stripe, PARTICLE, VACUUM).astype(np.uint8)
        _absorb_slivers(regions, threshold)
        assert bool((regions[stripe] == PARTICLE).all()) is stays, (across, threshold)
        assert bool((regions[stripe] == VACUUM).all()) is not stays
        assert (regions[~stripe] == VACUUM).all()
