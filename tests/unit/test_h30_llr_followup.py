"""Evidence sums: the rates calibrated over the whole frame, not over the vacuum blocks (audit h30 follow-up).

Off its configured dose the engine's output is not the truth times one factor: at 1.25x it keeps vacuum
near the configured level but lets the specimen follow the input further (held scene, live CPU engine:
after the vacuum-block calibration, 1.24, the rates over real columns' 1.25 A disks were 5 % above the
counts). Scored on 4 evidence frames with the pattern model that excess turned 43 % of real columns
negative (57 % positive against 95 % at the dose; 98 % with the noise-free image as the rates). An
evidence sum is now calibrated by its Poisson maximum-likelihood scale over the whole frame (counts' sum
over rates' sum): 87-88 % positive at 1.25x. A frame scored on its own counts keeps the vacuum-block
calibration of ``LikelihoodStage.compute`` (``test_h30_llr_calibration.py``).
"""

from __future__ import annotations

import numpy as np
import torch

from sbd_stream.compute.likelihood import LikelihoodStage
from sbd_stream.compute.scoring import score_frames
from sbd_stream.config import LikelihoodSettings
from training.sim.likelihood_synthetic import lattice_image

DOSE, PX, N = 0.45 * 16, 0.24, 4  # a working pixel (4 x 4 detector pixels) at the paper's dose; 4 frames


def _stage() -> LikelihoodStage:
    """The service's stage with evidence frames: the pattern model over 1.25 A (``evidence_defaults``)."""
    return LikelihoodStage(LikelihoodSettings(enabled=True, evidence_frames=N).at_pixel(PX))


def _batch(factor: float, specimen_gain: float, seeds=(1, 2, 3)):
    """(evidence sums at ``factor`` x the dose, rates as the engine gives them, own counts, denoised).

    The "engine" keeps vacuum at the configured level and its specimen ``specimen_gain`` above it."""
    sums, dens, owns = [], [], []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        clean, _ = lattice_image((192, 256), PX, rng, amplitude=0.3, particle_radius_A=22.0)
        specimen = np.abs(clean - 1.0) > 1e-3
        sums.append(rng.poisson(clean * DOSE * factor * N).astype(np.float32))
        owns.append(rng.poisson(clean * DOSE * factor).astype(np.float32))
        dens.append((clean * DOSE * np.where(specimen, specimen_gain, 1.0)).astype(np.float32))
    den = torch.from_numpy(np.stack(dens))
    return torch.from_numpy(np.stack(sums)), den * N, torch.from_numpy(np.stack(owns)), den


def _scored(stage: LikelihoodStage, factor: float, gain: float) -> tuple[float, float, float]:
    """(median calibrated rates' / counts' region sum over the columns found, share positive, median LLR)."""
    scored, rates, own, den = _batch(factor, gain)
    has = torch.ones(scored.shape[0], dtype=torch.bool)
    res = score_frames(stage, None, scored, rates, own, den, has)
    k, _, n = stage.region_sums(scored, rates, res.centres)  # lam1: the calibrated rates' region mean
    excess = float((res.lam1 * n / k).median())
    return excess, float((res.llr > 0).float().mean()), float(res.llr.median())


def test_an_evidence_sum_is_scored_against_rates_in_its_own_scale_on_the_specimen() -> None:
    """1.25x, the engine's specimen 5 % above its vacuum's scale, about half the frame specimen. Before:
    calibrated on the vacuum blocks, the rates over the columns 5.1 % above the counts, 92 % positive, median
    LLR 6.4; now 1.9 % above, 99 % and 9.9, as where the engine's error is one factor (99 %, 10.6)."""
    stage = _stage()
    _, pos_scale, med_scale = _scored(stage, 1.25, 1.0)  # the engine off by one factor: calibrated exactly
    excess, pos, med = _scored(stage, 1.25, 1.05)
    assert excess < 1.03, excess
    assert pos > pos_scale - 0.03, (pos, pos_scale)
    assert med > 0.85 * med_scale, (med, med_scale)
