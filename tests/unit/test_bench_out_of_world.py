"""bench_out_of_world: its measures on synthetic arrays whose answer is known, and the product paths it runs.

Why: docs/limits.md quotes these numbers to tell a microscopist what the engines cannot do; a measure
that read a right lattice as wrong (or a flattened column as kept) would misstate the product's limits.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import bench_out_of_world as bow
from benchmarks import out_of_world_measures as owm

PX, N = 0.06, 432  # the benchmark's crystal crop: 26 A at 0.060 A


def lattice(d_A: float, angle_deg: float = 0.0, square: bool = True) -> np.ndarray:
    """cos waves of period ``d_A``: a square lattice (2 waves at 90 deg), else one wave, turned."""
    yy, xx = np.indices((N, N)) * PX
    out = np.zeros((N, N))
    for a in (angle_deg, angle_deg + 90) if square else (angle_deg,):
        t = np.deg2rad(a)
        out += np.cos(2 * np.pi * (xx * np.cos(t) + yy * np.sin(t)) / d_A)
    return out


def test_the_clean_lattice_holds_its_own_band_power() -> None:
    au = lattice(2.04)  # Au [100]'s {200}: k = 0.49 1/A
    p, k = owm.power_spectrum(au, PX)
    near = owm.reflections(p, k)
    assert owm.on_reflection_fraction(p, k, near) > 0.97


def test_power_on_a_lattice_the_specimen_lacks_is_counted_off_its_reflections() -> None:
    """Amplitudes 1 and 2: the true lattice carries 1 / (1 + 4) = 20 % of the band's power."""
    truth = lattice(2.04)
    wrong = lattice(2.265, angle_deg=45.0)  # a Pt(111)-like spacing, turned off the true reflections
    p_truth, k = owm.power_spectrum(truth, PX)
    near = owm.reflections(p_truth, k)
    p_mix, _ = owm.power_spectrum(truth + 2.0 * wrong, PX)
    assert owm.on_reflection_fraction(p_mix, k, near) == pytest.approx(0.2, abs=0.03)
    assert owm.on_reflection_fraction(owm.power_spectrum(wrong, PX)[0], k, near) < 0.03


def test_a_ring_of_lattice_power_off_the_reflections_is_found_at_its_radius() -> None:
    """Waves of one spacing in 12 orientations (a powder-like ring, as the engines draw over Au [100])
    beside the true lattice: the ring's radius, within one bin (0.039 1/A), not the true reflections'."""
    truth = lattice(2.04)
    ring = sum(lattice(2.265, angle_deg=a, square=False) for a in np.arange(7.0, 180.0, 15.0))
    p_truth, k = owm.power_spectrum(truth, PX)
    near = owm.reflections(p_truth, k)
    p_mix, _ = owm.power_spectrum(truth + 0.5 * ring, PX)
    peak, lo, hi = owm.off_reflection_ring(p_mix, k, near)
    assert peak == pytest.approx(1 / 2.265, abs=1 / (N * PX))
    assert lo <= peak <= hi and hi - lo < 4 / (N * PX)  # a sharp ring: a few bins at half maximum


def test_white_noise_puts_only_the_reflections_share_of_the_area_on_them() -> None:
    p_truth, k = owm.power_spectrum(lattice(2.04), PX)
    near = owm.reflections(p_truth, k)
    band = (k >= owm.BAND[0]) & (k <= owm.BAND[1])
    area = (near & band).sum() / band.sum()
    rng = np.random.default_rng(0)  # the mean spectrum of 8 draws, as the benchmark averages its frames
    p = np.mean([owm.power_spectrum(rng.normal(size=(N, N)), PX)[0] for _ in range(8)], 0)
    assert owm.on_reflection_fraction(p, k, near) == pytest.approx(area, rel=0.25)
    assert area < 0.1


def test_a_gaussian_bump_has_its_known_peak_contrast() -> None:
    """A bump of amplitude a and width s on a level b: over a disk of radius R its mean excess is
    a * 2 s^2 / R^2 * (1 - exp(-R^2 / 2 s^2)); the ring sees the level."""
    yy, xx = np.indices((200, 200))
    a, s, b, c = 0.15, 5.0, 1.02, (100.0, 100.0)
    img = b + a * np.exp(-((yy - c[0]) ** 2 + (xx - c[1]) ** 2) / (2 * s**2))
    r = 6.0
    want = a * 2 * s**2 / r**2 * (1 - np.exp(-(r**2) / (2 * s**2)))
    assert owm.disk_contrast(img, c, r, (50, 83)) == pytest.approx(want, rel=0.05)
    assert owm.disk_contrast(np.full((200, 200), b), c, r, (50, 83)) == pytest.approx(0.0, abs=1e-12)


def test_the_oracle_low_pass_blurs_a_flat_region_most_and_beats_the_raw_frame() -> None:
    rng = np.random.default_rng(1)
    clean = np.ones((128, 128))
    raws = rng.poisson(clean * 0.45, size=(2, 128, 128)) / 0.45
    mask = np.zeros((128, 128), bool)
    mask[32:96, 32:96] = True
    sigma, err = owm.oracle_low_pass(raws, clean, mask, PX)
    assert sigma == max(owm.SIGMAS_A)
    assert err < 0.1 * owm.rmse(raws[0], clean, mask)


def test_columns_are_matched_within_the_tolerance_and_the_rest_is_spurious() -> None:
    truth = np.array([[10.0, 10.0], [50.0, 50.0], [90.0, 90.0]])
    found = np.array([[11.0, 10.5], [50.0, 58.0], [30.0, 70.0]])
    assert owm.match(found, truth, 2.0) == (1, 2)
    assert owm.match(np.zeros((0, 2)), truth, 2.0) == (0, 0)


def test_unknown_scenes_are_refused_before_any_simulation(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        bow.main(["--scenes", "columns,gold"])
    assert e.value.code == 2
    assert "--scenes" in capsys.readouterr().err


def test_the_product_paths_return_vacuum_as_vacuum_and_score_only_full_evidence(tmp_path: Path) -> None:
    """The offline file path and the live stage on vacuum frames: the level comes back as 1 in vacuum
    units, and only frames after the 4 evidence frames carry a column table."""
    raw = np.random.default_rng(2).poisson(0.45, size=(bow.EVIDENCE + 1, 256, 256)).astype(np.uint16)
    off, label = bow.offline(raw[:2], 0.45)
    assert off.shape == (2, 256, 256) and abs(float(off.mean()) - 1) < 0.02 and "8 orientations" in label
    den, cols, label = bow.live(raw, 0.45)
    assert den.shape == raw.shape and abs(float(den.mean()) - 1) < 0.02 and "live" in label
    assert [c is not None for c in cols] == [False] * bow.EVIDENCE + [True]


def test_the_likelihood_count_splits_found_and_spurious_columns_and_skips_unscored_frames() -> None:
    """Column tables (row, col, LLR, mean) in detector pixels: a frame without full evidence is left out;
    a column within 0.7 A of the clean image's counts as found, any other as spurious."""
    truth = np.array([[100.0, 100.0], [300.0, 300.0]])
    frame = np.array([[101.0, 100.0, 5.0, 1.1], [200.0, 200.0, 3.0, 1.1], [250.0, 250.0, -1.0, 1.0]])
    res = bow.likelihood("columns", [None, frame], truth)
    assert res is not None and res["frames"] == 1 and res["clean_columns"] == 2
    assert res["found_per_frame"] == 1 and res["found_llr_positive"] == 1.0
    assert res["spurious_per_frame"] == 2 and res["spurious_llr_positive"] == 0.5
    assert bow.likelihood("columns", [None, None], truth) is None


def test_a_run_writes_its_tables_and_results_where_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The vacuum scene needs no simulation: the whole command, end to end, into $SBD_BENCH_RESULTS."""
    monkeypatch.setenv("SBD_BENCH_RESULTS", str(tmp_path))
    bow.main(["--scenes", "vacuum", "--draws", str(bow.EVIDENCE + 1)])
    out = capsys.readouterr().out
    assert "RMSE in the region" in out and "live likelihood maps" in out
    res = json.loads((tmp_path / "out_of_world.json").read_text())
    assert res["command"].startswith("python -m benchmarks.bench_out_of_world")
    vac = res["scenes"]["vacuum"]
    assert vac["rmse"]["offline"] < vac["rmse"]["oracle low-pass"]  # the engines' own world: vacuum
    assert vac["detected"]["offline"]["found"] == 0 and vac["likelihood"]["frames"] == 1
