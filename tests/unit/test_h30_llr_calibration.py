"""The likelihood scores counts against rates in the counts' own scale (audit h30, likelihood).

The engine's output follows the *configured* dose, the estimated vacuum level the counts: a stream 10 %
brighter than configured (inside the service's 0.8-1.25x dose check, no warning) left the columns' rates
below the measured vacuum, and most real columns scored "vacuum" (39 % positive at 1.1x, 0 % at 1.25x,
against 95 %). The rates are now calibrated on the blocks the vacuum level is measured on.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sbd_stream.compute.likelihood import LikelihoodConfig, LikelihoodStage
from sbd_stream.compute.scoring import score_frames
from sbd_stream.compute.vacuum import CALIBRATION_RANGE, calibration
from training.sim.likelihood_synthetic import lattice_image

DOSE, PX = 0.45, 0.15


def _frames(factor: float, seeds=(1, 2, 3)) -> tuple[torch.Tensor, torch.Tensor]:
    """Counts at ``factor`` x the configured dose; the "denoised" rates at the configured one (the truth
    lightly perturbed), as the engine gives them."""
    raws, dens = [], []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        clean, _ = lattice_image((144, 176), PX, rng, amplitude=0.5, particle_radius_A=8.0)
        raws.append(rng.poisson(clean * DOSE * factor).astype(np.float32))
        dens.append((clean * DOSE * (1 + 0.02 * rng.standard_normal(clean.shape))).astype(np.float32))
    return torch.from_numpy(np.stack(raws)), torch.from_numpy(np.stack(dens))


def _positive(res) -> float:
    llr = torch.cat([c.llr for c in res.columns])
    return float((llr > 0).float().mean())


@pytest.mark.parametrize("factor", [0.8, 1.25, 2.0])  # before: 0.38, 0.22, 0 against 0.63 at the dose
def test_a_dose_off_the_configured_one_still_scores_the_columns_it_scores_at_the_right_dose(
    factor: float,
) -> None:
    stage = LikelihoodStage(LikelihoodConfig(pixel_size_A=PX))
    at_dose = _positive(stage(*_frames(1.0)))
    off = _positive(stage(*_frames(factor)))
    assert at_dose > 0.5  # one frame of its own counts, contrast 0.5: ~0.63 here
    assert off > at_dose - 0.1, (factor, off, at_dose)  # before: 1.1x ~0.3, 1.25x 0


def test_the_batch_stage_scoring_is_calibrated_as_the_compute_api() -> None:
    """``score_frames`` (the service's path) and ``LikelihoodStage`` (the Python API) score alike."""
    stage = LikelihoodStage(LikelihoodConfig(pixel_size_A=PX))
    raw, den = _frames(1.25)
    api = stage.compute(raw, den)
    has = torch.zeros(raw.shape[0], dtype=torch.bool)
    svc = score_frames(stage, stage, raw, den, raw, den, has)
    torch.testing.assert_close(svc.llr, api.llr)
    assert float((svc.llr > 0).float().mean()) > 0.5


def test_the_fixed_vacuum_mode_is_not_calibrated() -> None:
    """Its level is the user's, stated for the stream: the rates stay as given."""
    stage = LikelihoodStage(LikelihoodConfig(pixel_size_A=PX, vacuum_mode="fixed", vacuum_counts=DOSE))
    raw, den = _frames(1.0)
    d = stage.compute(raw, den)
    plain = stage.llr(raw, den, d.centres, d.lam0, torch.ones_like(raw, dtype=torch.bool))[0]
    torch.testing.assert_close(d.llr, plain)


def test_calibration_is_the_ratio_clamped_and_one_where_unknown() -> None:
    lo, hi = CALIBRATION_RANGE
    counts = torch.tensor([0.55, 0.45, 10.0, 0.01, 1.0, float("nan")])
    rates = torch.tensor([0.50, 0.45, 0.5, 1.0, 0.0, 0.5])
    got = calibration(counts, rates)
    torch.testing.assert_close(got, torch.tensor([1.1, 1.0, hi, lo, 1.0, 1.0]))
