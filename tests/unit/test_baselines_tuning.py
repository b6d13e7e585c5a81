"""Table 5.1's classical baselines: tuning scores every validation image it is asked to, and the adaptive
Wiener filter's noise power follows the dose (audit 27, mutants BL1 and BL3: a Wiener filter whose noise
was off by 1/dose still beat the raw frame, so the existing test could not tell)."""

from __future__ import annotations

import numpy as np
import pytest

from training.evaluate.baselines import Baseline, adaptive_wiener, tune
from training.evaluate.metrics import psnr


def test_tune_scores_each_grid_point_on_every_validation_image_asked_for() -> None:
    rng = np.random.default_rng(0)
    items = [
        (rng.uniform(0.5, 1.5, (16, 16)), rng.poisson(0.45, (16, 16)).astype(np.float32)) for _ in range(5)
    ]
    seen: list[tuple[float, int]] = []

    def scaled(counts: np.ndarray, dose: float, k: float = 1.0) -> np.ndarray:
        seen.append((k, next(i for i, (_, c) in enumerate(items) if c is counts)))
        return k * np.asarray(counts, np.float64) / dose

    b = Baseline("scaled", scaled, [{"k": 0.5}, {"k": 1.0}], tune_images=3)
    params, scores = tune(b, items, 0.45)
    assert sorted(seen) == [(k, i) for k in (0.5, 1.0) for i in range(3)]  # 3 of the 5, each grid point
    for k in (0.5, 1.0):
        want = np.mean([psnr(c, k * n / 0.45) for c, n in items[:3]])
        assert scores[repr({"k": k})] == pytest.approx(want)
    assert params == {"k": max((0.5, 1.0), key=lambda k: scores[repr({"k": k})])}


@pytest.mark.parametrize("dose", [0.1, 0.45, 2.0])
def test_adaptive_wiener_smooths_flat_noise_at_the_noise_power_the_dose_implies(dose: float) -> None:
    """A flat clean frame: Var(counts / dose) = 1 / dose is all noise, so with its noise power known the
    filter is nearly the local mean (~1 / (dose * size^2)); a noise power off by 1/dose (the image mean)
    keeps much of it at a low dose (at 0.45 counts/px ~30 % of the raw variance)."""
    counts = np.random.default_rng([5, int(dose * 100)]).poisson(dose, (192, 192)).astype(np.float32)
    raw_var = float(np.var(counts / dose))
    assert raw_var == pytest.approx(1 / dose, rel=0.1)
    out = adaptive_wiener(counts, dose, size=19, noise_scale=1.0)
    assert np.mean(out) == pytest.approx(1.0, rel=0.05)
    assert np.var(out) < 0.05 * raw_var


def test_adaptive_wiener_keeps_structure_above_the_dose_s_noise() -> None:
    """At a high dose (noise power 0.05) a lattice of variance 0.16 is kept: the noise power is the
    dose's, not the image mean's (1.0, which would flatten it to the local mean)."""
    dose = 20.0
    y, x = np.mgrid[:192, :192]
    clean = 1.0 + 0.8 * np.cos(2 * np.pi * x / 12) * np.cos(2 * np.pi * y / 12)
    counts = np.random.default_rng(3).poisson(clean * dose).astype(np.float32)
    out = adaptive_wiener(counts, dose, size=19, noise_scale=1.0)
    assert np.var(out) > 0.7 * np.var(clean)  # lattice kept
    assert np.var(out - clean) < 0.9 * np.var(counts / dose - clean)  # and some noise taken off it
