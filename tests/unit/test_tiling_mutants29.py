"""Tile geometry and blending weights pinned to their documented values (mutation round h29,
compute/tiling.py).

test_tiling.py holds tiling to whole-frame inference, which any valid plan reproduces at a margin >= the
network's reach; what a plan reports (its widened overlap, largest stride, seam lines), how evenly its
tiles are spread, the sin^2 hand-over's shape and the Gaussian importance map were free to change.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from sbd_stream.compute.tiling import BlendWindow, axis_weights, plan_axis, plan_tiles


def test_the_plans_overlap_is_the_requested_one_widened_by_rounding_the_step_to_the_pooling_grid() -> None:
    """tile 64, margin 6, overlap 10, multiple 4: the largest step, 64 - 12 - 10 = 42, rounds down to 40,
    so neighbouring cores share 12 pixels. Mutants: the step not rounded; the overlap reported as asked."""
    plan = plan_tiles(1000, 1000, tile=64, margin=6, overlap=10, multiple=4)
    assert plan.overlap == 12
    assert plan.rows.stride == 40
    widths = [width for _start, width in plan.rows.bands]
    assert min(widths) == 12  # at the largest step the band is the cores' whole common part


def test_tiles_are_spread_evenly_between_the_first_and_the_last() -> None:
    """Steps between neighbouring origins differ by at most one pooling unit, so no two tiles crowd each
    other while others sit a whole step apart. Mutant: full steps from the start, the last tile pulled
    back to the frame's end (a short last step)."""
    for length in range(65, 700, 7):
        ax = plan_axis(length, tile=64, margin=6, overlap=12, multiple=4)
        steps = [b - a for a, b in itertools.pairwise(ax.origins)]
        assert steps and max(steps) - min(steps) <= 4, (length, ax.origins)


def test_the_stride_is_the_largest_step() -> None:
    """``stride`` is the largest step (uneven steps: 5 units of 4 over two steps). Mutant: the smallest."""
    ax = plan_axis(36, tile=16, margin=0, overlap=0, multiple=4)
    assert ax.origins == (0, 8, 20)
    assert ax.stride == 12


def test_a_negative_overlap_is_refused() -> None:
    """A negative overlap would step the tiles further apart than their cores reach, leaving pixels that
    no tile keeps. Mutant: only the margin checked."""
    with pytest.raises(ValueError, match="overlap"):
        plan_tiles(500, 500, tile=64, margin=6, overlap=-4, multiple=4)


def test_seam_positions_are_the_middles_of_the_bands() -> None:
    """Mutant: the band's start."""
    plan = plan_tiles(200, 200, tile=64, margin=6, overlap=12, multiple=4)
    assert plan.seam_positions(0) == [start + width // 2 for start, width in plan.rows.bands]
    assert all(width >= 2 for _s, width in plan.rows.bands)


def test_the_cosine_hand_over_is_a_sin2_ramp_sampled_at_pixel_centres() -> None:
    """In a band of width w the next tile's weight at the band's i-th pixel is sin^2(pi/2 (i + 1/2) / w):
    every band pixel blends both tiles and the ramp is symmetric (w_i + w_{w-1-i} = 1). Mutant: sampled
    at pixel edges, the band's first pixel gave the next tile nothing (one pixel less of hand-over)."""
    ax = plan_axis(200, tile=64, margin=6, overlap=12, multiple=4)
    w = axis_weights(ax, BlendWindow.cosine)
    for k, (start, width) in enumerate(ax.bands):
        pos = torch.arange(start, start + width)
        nxt = w[k + 1][pos - ax.origins[k + 1]]
        want = torch.tensor([math.sin(0.5 * math.pi * (i + 0.5) / width) ** 2 for i in range(width)])
        torch.testing.assert_close(nxt, want.to(torch.float64), rtol=0, atol=1e-6)
        assert ((nxt > 0) & (nxt < 1)).all()


def test_the_gaussian_window_is_the_importance_map_with_sigma_an_eighth_of_the_tile() -> None:
    """Where two tiles cover a pixel, their Gaussian weights stand in the ratio of exp(-d^2 / 2 s^2) with d
    the pixel's distance from each tile's centre ((tile - 1) / 2) and s = tile / 8 (MONAI / nnU-Net).
    Mutants: s = tile / 4; the centre half a pixel off."""
    tile = 64
    ax = plan_axis(100, tile=tile, margin=6, overlap=12, multiple=4)
    assert ax.count == 2
    w = axis_weights(ax, BlendWindow.gaussian)
    sigma, centre = tile / 8.0, (tile - 1) / 2
    lo, hi = ax.kept[1][0], ax.kept[0][1]  # pixels both tiles keep
    assert hi - lo >= 4
    for p in range(lo, hi):
        d0, d1 = p - ax.origins[0] - centre, p - ax.origins[1] - centre
        want = math.exp(-0.5 * (d0 / sigma) ** 2) / math.exp(-0.5 * (d1 / sigma) ** 2)
        got = float(w[0][p - ax.origins[0]] / w[1][p - ax.origins[1]])
        assert got == pytest.approx(want, rel=1e-9), p
