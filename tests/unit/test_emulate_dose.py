"""The emulator's counts are Poisson at any dose it accepts, and a dose its count type cannot hold is
refused instead of clipped.

Why: the Poisson table was a uint8 inverse CDF built for counts up to 254 (and ``exp(-rate)`` underflows
above ~745), so at 300 counts/px every pixel of the held scene came out as 254 (vacuum mean 254,
variance 0.14) without a word; numpy's sampler clipped counts to the dtype's maximum the same way.
"""

from __future__ import annotations

import numpy as np
import pytest

from sbd_stream.cli.scene_options import bundled_scene
from sbd_stream.compute.poisson_table import TABLE_MAX_RATE, PoissonTable, max_rate
from sbd_stream.sources.emulator import FrameSource
from sbd_stream.sources.emulator_settings import EmulatorSettings

N = 200_000


def _moments_are_poisson(counts: np.ndarray, lam: float, n: int) -> None:
    """Mean and variance equal ``lam`` within 5 standard errors of ``n`` Poisson draws (+ the table's
    1e-3 quantisation allowance)."""
    c = counts.astype(np.float64)
    assert c.mean() == pytest.approx(lam, abs=5 * np.sqrt(lam / n) + 1e-3 * lam)
    assert c.var() == pytest.approx(lam, abs=5 * lam * np.sqrt(2 / n + 1 / (n * lam)) + 1e-3 * lam)


@pytest.mark.parametrize("lam", [0.45, 7.2])
def test_paper_doses_still_come_from_the_fast_table(lam: float) -> None:
    """0.45 counts/px (0.060 A) and 7.2 per 0.24 A pixel: the uint8 table as before, Poisson moments."""
    table = PoissonTable(lam * 1.46, levels=256, anchor=lam)
    assert not table.exact and table.lam_max <= TABLE_MAX_RATE
    counts = table.draw(table.index(np.full(N, lam, np.float32)), np.random.default_rng(0))
    assert counts.dtype == np.uint8
    _moments_are_poisson(counts, lam, N)
    assert (counts == 0).mean() == pytest.approx(np.exp(-lam), abs=5 * np.sqrt(np.exp(-lam) / N) + 1e-4)


@pytest.mark.parametrize("lam", [300.0, 1000.0])
def test_high_rates_are_poisson_not_capped_at_254(lam: float) -> None:
    table = PoissonTable(lam * 1.46, levels=256, anchor=lam)
    counts = table.draw(table.index(np.full(N, lam, np.float32)), np.random.default_rng(1))
    _moments_are_poisson(counts, lam, N)
    assert counts.max() > 255


@pytest.mark.parametrize(("dose", "pool"), [(300.0, 0), (1000.0, 2)])
def test_held_scene_at_high_dose_has_poisson_vacuum_and_footprint(dose: float, pool: int) -> None:
    """The bundled scene (0.24 A pixels: a 220 px footprint in a 384 px frame) at 300 and 1000
    counts/px: the vacuum drawn from the table (pool 0) or the pre-drawn pool, the footprint from the
    table, each Poisson around the recorded truth."""
    cfg = EmulatorSettings(
        scene=bundled_scene(), shape=(384, 384), pixel_size_A=0.24, dose=dose, pool=pool, seed=3
    )
    frames = FrameSource(cfg).frames()
    counts, truth = next(frames)
    assert truth is not None
    vacuum = np.abs(truth - dose) < 1e-6 * dose
    assert 0.5 < vacuum.mean() < 0.8
    _moments_are_poisson(counts[vacuum], dose, int(vacuum.sum()))
    footprint = ~vacuum
    resid = counts[footprint].astype(np.float64) - truth[footprint]
    n = int(footprint.sum())
    assert abs(resid.mean()) < 5 * np.sqrt(truth[footprint].mean() / n) + 1e-3 * dose
    assert (resid**2).mean() / truth[footprint].mean() == pytest.approx(1.0, abs=5 * np.sqrt(2 / n) + 2e-3)


def test_count_type_limits() -> None:
    """uint8 holds a Poisson rate of 159 (a count over 255 once in 10^12 pixels), uint16 63751."""
    assert max_rate("uint8") == pytest.approx(159.05, abs=0.01)
    assert max_rate("uint16") == pytest.approx(63751.3, abs=0.1)


@pytest.mark.parametrize(
    ("dtype", "dose", "scene"),
    [("uint8", 300.0, True), ("uint8", 160.0, False), ("uint16", 50_000.0, True)],
)
def test_a_dose_the_count_type_cannot_hold_is_refused(dtype: str, dose: float, scene: bool) -> None:
    cfg = EmulatorSettings(
        scene=bundled_scene() if scene else None, shape=(64, 64), dtype=dtype, dose=dose, pool=0
    )
    with pytest.raises(ValueError, match=f"does not fit {dtype} counts") as info:
        FrameSource(cfg)
    assert "\n" not in str(info.value) and "counts/px as" in str(info.value)


def test_a_dose_just_within_uint8_is_sent_unclipped() -> None:
    """Synthetic lattice (brightest pixel = vacuum) at 150 counts/px as uint8: Poisson, nothing at 255."""
    cfg = EmulatorSettings(shape=(256, 256), dtype="uint8", dose=150.0, pool=0, pixel_size_A=0.24)
    counts, truth = next(FrameSource(cfg).frames())
    assert counts.dtype == np.uint8 and counts.max() < 255
    vacuum = np.abs(truth - 150.0) < 1e-3
    _moments_are_poisson(counts[vacuum], 150.0, int(vacuum.sum()))
