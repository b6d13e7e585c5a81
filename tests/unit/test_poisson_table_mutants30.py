"""The Poisson table's arithmetic pinned exactly (mutation round h30).

Rules quoted from ``sbd_stream/compute/poisson_table.py``; every check here is deterministic (the table
is compared bin by bin with scipy's Poisson distribution, not sampled).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import poisson

from sbd_stream.compute.poisson_table import TABLE_MAX_RATE, U_BITS, PoissonTable


def test_every_tail_probability_is_within_half_a_uniform_bin_of_poisson() -> None:
    """'a count is F^-1(u) for u the midpoint of one of 2^14 equal bins': the share of bins giving a
    count >= k is P(X >= k) at the level's rate to within half a bin, at every level and k."""
    table = PoissonTable(3.0, levels=16)
    n_u = 1 << U_BITS
    t = table._table.reshape(16, n_u)
    rates = np.linspace(0.0, table.lam_max, 16)
    for k in range(1, 16):
        share = (t >= k).mean(axis=1)
        np.testing.assert_array_less(np.abs(share - poisson.sf(k - 1, rates)), 0.5 / n_u + 1e-12)


def test_an_anchor_raises_lam_max_never_lowers_it() -> None:
    """'lam_max is raised, at most one step per level below anchor, until anchor is a level': 0.45 at
    1/255 steps is 114.75 steps; the level below (114) makes the step 0.45 / 114 and lam_max 1.0066,
    where the nearest level (115) would have lowered it to 0.9978 and clipped rates above it."""
    table = PoissonTable(1.0, levels=256, anchor=0.45)
    assert table.lam_max == pytest.approx(0.45 / 114 * 255)
    q = table.index(np.array([0.45, 1.0]))
    assert (q[0] >> U_BITS) == 114 and (q[1] >> U_BITS) == 253  # 1.0 is 253.3 steps: inside the table


def test_rates_are_quantised_to_the_nearest_level() -> None:
    """'the expected counts are quantised ... to levels rates in [0, lam_max] (steps of lam_max /
    (levels - 1))': with 11 levels over [0, 1] a rate of 0.26 is level 3 (0.3 is nearer than 0.2)."""
    table = PoissonTable(1.0, levels=11)
    levels = table.index(np.array([0.0, 0.04, 0.06, 0.26, 1.0, 2.0])) >> U_BITS
    assert levels.tolist() == [0, 0, 1, 3, 10, 10]


def test_the_table_holds_rates_up_to_table_max_rate_inclusive() -> None:
    """'Largest lam_max drawn from the table': lam_max = TABLE_MAX_RATE is a table; above it, exact."""
    assert not PoissonTable(TABLE_MAX_RATE, levels=4).exact
    assert PoissonTable(TABLE_MAX_RATE * 1.001, levels=4).exact


def test_the_exact_sampler_takes_negative_rates_as_zero() -> None:
    """An exact table's ``index`` gives 'the rates themselves (float64, >= 0)': a negative expected count
    (a rendering undershoot) draws 0, where numpy's sampler would raise."""
    table = PoissonTable(100.0)
    c = table.draw(table.index(np.array([-0.5, 0.0])), np.random.default_rng(0))
    assert c.tolist() == [0, 0]


def test_a_draw_reads_only_its_own_rates_row() -> None:
    """``draw``: 'random 14-bit uniforms' index one row of the table: at rate 0 every count is 0, and
    the top level's draws stay inside the table (its shares of 0 are P(X = 0) to within a few bins)."""
    table = PoissonTable(3.0, levels=2)
    rng = np.random.default_rng(0)
    assert not table.draw(table.index(np.zeros((64, 64))), rng).any()
    top = table.draw(table.index(np.full((256, 256), 3.0)), rng)
    assert (top == 0).mean() == pytest.approx(np.exp(-3.0), abs=0.005)
