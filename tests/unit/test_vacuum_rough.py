"""The vacuum estimator's ``rough`` flag at its bound, ``ROUGH_MAX`` (compute/vacuum.py).

vacuum.py: ``rough`` is "the chosen blocks' mean variance of the *denoised* frame over the level, flagged
above ``ROUGH_MAX``: < 1e-4 in vacuum at the engine's dose, 0.007-0.05 on flat specimen. It is the only
one that sees a weak flat specimen taken for vacuum (... raw statistics 0.3-0.9 of their bounds, ``rough``
0.007-0.008)". Here the raw counts are perfectly flat (every raw statistic 0) so ``rough`` alone decides:
a denoised texture of variance 0.008 x level is flagged (``meta.vacuum_not_flat``), one of 0.003 is not.
"""

from __future__ import annotations

import math

import pytest
import torch

from sbd_stream.compute.likelihood import LikelihoodConfig
from sbd_stream.compute.vacuum import ROUGH_MAX, vacuum_blocks

LEVEL = 2.0
SIZE = 128


def _blocks(rough: float) -> tuple[float, bool]:
    cfg = LikelihoodConfig(pixel_size_A=0.24)
    raw = torch.full((1, SIZE, SIZE), LEVEL)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    checker = ((yy + xx) % 2 * 2 - 1).to(torch.float32)  # +-1: variance 1 (to 1e-5) in every block
    den = LEVEL + math.sqrt(rough * LEVEL) * checker[None]
    vb = vacuum_blocks(cfg, [raw], den)
    assert float(vb.levels[0][0]) == pytest.approx(LEVEL)
    assert float(vb.spread[0]) <= 1 and float(vb.grain[0]) <= 1 and float(vb.texture[0]) <= 1
    return float(vb.rough[0]), bool(vb.not_flat[0])


@pytest.mark.parametrize(("rough", "flagged"), [(0.008, True), (0.02, True), (0.003, False), (1e-5, False)])
def test_rough_alone_flags_a_flat_specimen_above_rough_max(rough: float, flagged: bool) -> None:
    assert ROUGH_MAX == 0.005  # the documented bound
    got, not_flat = _blocks(rough)
    assert got == pytest.approx(rough, rel=1e-3)
    assert not_flat is flagged, (rough, got)
