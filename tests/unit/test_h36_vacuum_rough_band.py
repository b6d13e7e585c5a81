"""``rough`` counts only inside the dose band (``VacuumBlocks.not_flat``, session 36), at its edges exactly.

Off ``DOSE_BAND`` the engine leaves genuine vacuum rough and the dose check already warns; inside it
``rough`` still flags as before. ``dose`` is the first level over the denoised mean on the chosen blocks.
"""

from __future__ import annotations

import math

import pytest
import torch

from sbd_stream.compute.likelihood_config import LikelihoodConfig
from sbd_stream.compute.vacuum import VacuumBlocks, vacuum_blocks


@pytest.mark.parametrize(
    ("dose", "flagged"),
    [(0.79, False), (0.8, True), (1.0, True), (1.25, True), (1.26, False), (math.nan, False), (None, True)],
)
def test_rough_counts_only_inside_the_dose_band(dose: float | None, flagged: bool) -> None:
    zero = torch.tensor([0.0])
    d = None if dose is None else torch.tensor([dose])
    vb = VacuumBlocks([torch.tensor([7.2])], zero, zero, zero, torch.tensor([0.01]), d)
    assert bool(vb.not_flat[0]) is flagged


def test_raw_statistics_flag_at_any_dose() -> None:
    zero = torch.tensor([0.0])
    vb = VacuumBlocks([torch.tensor([7.2])], torch.tensor([2.0]), zero, zero, zero, torch.tensor([3.0]))
    assert bool(vb.not_flat[0])


def test_dose_is_the_level_over_the_denoised_mean_on_the_chosen_blocks() -> None:
    cfg = LikelihoodConfig(pixel_size_A=0.24)
    raw = torch.full((2, 64, 64), 7.0)
    den = torch.stack([torch.full((64, 64), 3.5), torch.full((64, 64), 7.0)])
    vb = vacuum_blocks(cfg, [raw], den, masked=True)
    assert vb.dose is not None
    assert vb.dose.tolist() == pytest.approx([2.0, 1.0])
