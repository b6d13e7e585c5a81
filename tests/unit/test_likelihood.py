"""Likelihood maps: fast torch path against the explicit reference, and the Fig. 3.3 behaviour."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from likelihood_reference import reference_calibration, reference_frame, reference_vacuum

from sbd_stream.compute.likelihood import (
    ColumnPolarity,
    LikelihoodConfig,
    LikelihoodStage,
    VacuumMode,
    detect_columns,
    disk_offsets,
    estimate_vacuum,
    likelihood_map,
)
from training.sim.likelihood_synthetic import lattice_image

DOSE = 0.45
PX = 0.15


def _frame(seed: int, amplitude: float, shape=(144, 176), radius_A: float = 8.0, centre_shift=(0.0, 0.0)):
    rng = np.random.default_rng(seed)
    clean, cols = lattice_image(shape, PX, rng, amplitude=amplitude, particle_radius_A=radius_A)
    if centre_shift != (0.0, 0.0):
        clean = np.roll(clean, (int(centre_shift[0]), int(centre_shift[1])), axis=(0, 1))
        cols["xy"] = cols["xy"] + np.asarray(centre_shift, np.float32)
    raw = rng.poisson(clean * DOSE).astype(np.float32)
    # a stand-in "denoised" frame: the truth, lightly perturbed so values are not all on a lattice
    den = (clean * DOSE * (1 + 0.02 * rng.standard_normal(clean.shape))).astype(np.float32)
    return raw, den, cols


CASES = [
    pytest.param(dict(amplitude=0.5), dict(polarity="bright"), id="bright"),
    pytest.param(dict(amplitude=-0.35), dict(polarity="dark"), id="dark"),
    # particle pushed against the corner: columns on and across the frame edge
    pytest.param(dict(amplitude=0.5, centre_shift=(-60, 75)), dict(polarity="bright"), id="near-edge"),
    # regions much wider than half the column spacing: every region overlaps its neighbours
    pytest.param(
        dict(amplitude=0.5), dict(polarity="bright", column_radius_A=2.1, log_sigma_A=0.45), id="overlapping"
    ),
    pytest.param(
        dict(amplitude=-0.35), dict(polarity="dark", vacuum_mode="fixed", vacuum_counts=0.47), id="fixed-vac"
    ),
    pytest.param(dict(amplitude=0.5, centre_shift=(-60, 75)), dict(column_model="pattern"), id="pattern"),
]


@pytest.mark.parametrize(("frame_kw", "cfg_kw"), CASES)
def test_fast_matches_reference(frame_kw, cfg_kw):
    cfg = LikelihoodConfig(pixel_size_A=PX, **cfg_kw)
    frames = [_frame(seed, **frame_kw) for seed in (1, 2)]
    raw = torch.from_numpy(np.stack([f[0] for f in frames]))
    den = torch.from_numpy(np.stack([f[1] for f in frames]))
    res = LikelihoodStage(cfg)(raw, den)
    assert res.map.shape == raw.shape and res.map.dtype == torch.float32
    for b, (r, d, _) in enumerate(frames):
        # the estimator picks the flattest pixels: float32 vs float64 variances may swap a few at the
        # cut, so the level is compared loosely and the rest runs on the fast path's level
        assert float(res.vacuum[b]) == pytest.approx(reference_vacuum(r, d, cfg), rel=2e-3)
        d = d * reference_calibration(r, d, cfg)  # estimated: the rates in the counts' scale (h30)
        ref_map, ref_cols, _ = reference_frame(r, d, cfg, vacuum=float(res.vacuum[b]))
        fast = res.columns[b]
        assert len(ref_cols.llr) > 10
        np.testing.assert_array_equal(fast.positions.numpy().astype(np.int64), ref_cols.positions)
        np.testing.assert_allclose(fast.raw_sum.numpy(), ref_cols.raw_sum, rtol=0, atol=1e-3)
        np.testing.assert_allclose(fast.n_pixels.numpy(), ref_cols.n_pixels, rtol=0, atol=0)
        np.testing.assert_allclose(fast.region_mean.numpy(), ref_cols.region_mean, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(fast.llr.numpy(), ref_cols.llr, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(res.map[b].numpy(), ref_map, rtol=1e-4, atol=1e-4)


def test_near_edge_and_overlap_cases_exercise_their_conditions():
    """Guard the fixtures above: they must really hold clipped regions and shared pixels."""
    r, d, _ = _frame(1, 0.5, centre_shift=(-60, 75))
    cfg = LikelihoodConfig(pixel_size_A=PX)
    res = likelihood_map(torch.from_numpy(r), torch.from_numpy(d), cfg)
    assert (res.columns[0].n_pixels < len(disk_offsets(cfg.radius_px))).any()
    cfg_big = LikelihoodConfig(pixel_size_A=PX, column_radius_A=2.1, log_sigma_A=0.45)
    pos = detect_columns(torch.from_numpy(_frame(1, 0.5)[1]), cfg_big)[0]
    gaps = torch.cdist(pos, pos) + 1e9 * torch.eye(len(pos))
    assert float(gaps.min()) < 2 * cfg_big.radius_px


def test_detection_finds_true_columns_on_clean_frame():
    for amp, pol in ((0.5, "bright"), (-0.35, "dark")):
        rng = np.random.default_rng(5)
        clean, cols = lattice_image((160, 160), PX, rng, amplitude=amp, particle_radius_A=7.0)
        cfg = LikelihoodConfig(pixel_size_A=PX, polarity=pol)
        det = detect_columns(torch.from_numpy(clean * DOSE), cfg)[0].numpy()
        truth = cols["xy"]
        dist = np.linalg.norm(det[:, None] - truth[None], axis=2)
        assert len(det) == len(truth)
        assert dist.min(axis=1).max() <= 1.0  # every detection within a pixel of a true column


def test_pixel_size_ties_parameters():
    a = LikelihoodConfig(pixel_size_A=0.1)
    b = LikelihoodConfig(pixel_size_A=0.2)
    assert a.radius_px == pytest.approx(2 * b.radius_px)
    assert a.sigma_px == pytest.approx(2 * b.sigma_px)
    assert a.sigma_px == pytest.approx(a.radius_px / math.sqrt(2))
    assert a.min_distance_px == 2 * b.min_distance_px
    d = a.describe()
    assert d["pixel_size_A"] == 0.1 and d["region_pixels"] == len(disk_offsets(a.radius_px))
    with pytest.raises(ValueError):
        LikelihoodConfig(vacuum_mode=VacuumMode.fixed)


def test_vacuum_estimate_is_the_background_for_bright_and_dark_columns():
    for amp in (0.5, -0.35):
        raw, den, _ = _frame(3, amp, radius_A=7.0)
        cfg = LikelihoodConfig(pixel_size_A=PX)
        lam0 = float(estimate_vacuum(torch.from_numpy(raw), torch.from_numpy(den), cfg)[0])
        n = cfg.vacuum_fraction * raw.size
        assert abs(lam0 - DOSE) < 4 * math.sqrt(DOSE / n)  # Poisson error of the mean over the mask


def test_llr_closed_form_and_sign():
    cfg = LikelihoodConfig(pixel_size_A=PX, vacuum_mode="fixed", vacuum_counts=0.5)
    stage = LikelihoodStage(cfg)
    raw = torch.zeros(1, 40, 40)
    raw[0, 18:23, 18:23] = 2.0
    den = torch.full((1, 40, 40), 0.8)
    centre = torch.tensor([[0, 20, 20]])
    llr, lam1, k, n = stage.llr(raw, den, centre, torch.tensor([0.5]))
    n_exp = len(disk_offsets(cfg.radius_px))
    k_exp = 2.0 * sum(1 for dy, dx in disk_offsets(cfg.radius_px) if abs(dy) <= 2 and abs(dx) <= 2)
    assert n.item() == n_exp and k.item() == k_exp and lam1.item() == pytest.approx(0.8)
    assert llr.item() == pytest.approx(k_exp * math.log(0.8 / 0.5) - n_exp * 0.3, rel=1e-6)


def test_paint_nearest_centre_wins_ties_take_lower():
    cfg = LikelihoodConfig(pixel_size_A=1.0, column_radius_A=3.0)
    stage = LikelihoodStage(cfg)
    centres = torch.tensor([[0, 10, 10], [0, 10, 14], [1, 5, 5]])
    m = stage.paint((2, 20, 20), centres, torch.tensor([5.0, -1.0, 7.0]))
    assert m[0, 10, 10] == 5.0 and m[0, 10, 11] == 5.0
    assert m[0, 10, 12] == -1.0  # equidistant: the lower value
    assert m[0, 10, 13] == -1.0 and m[0, 0, 0] == 0.0
    assert m[1, 5, 8] == 7.0 and m[1, 5, 9] == 0.0 and m[0, 5, 5] == 0.0


def test_planted_spurious_columns_get_low_ratio_real_ones_high():
    """Fig. 3.3's case: columns painted into the denoised image where the raw counts show vacuum.

    One frame at 0.45 counts/px is weak evidence per region (a single LLR spreads by ~2), so the two
    populations are judged over four frames (32 planted, ~90 real columns of contrast 1 over vacuum).
    """
    shape, amp, s = (192, 192), 1.0, 0.45 / PX
    fakes = np.array([[14, 14], [14, 176], [176, 14], [176, 176], [96, 10], [10, 96], [182, 96], [96, 182]])
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    raws, dens, truths = [], [], []
    for seed in (11, 12, 13, 14):
        rng = np.random.default_rng(seed)
        clean, cols = lattice_image(shape, PX, rng, amplitude=amp, particle_radius_A=8.0, adatoms=0)
        raws.append(rng.poisson(clean * DOSE).astype(np.float32))
        den = clean * DOSE
        for fy, fx in fakes:
            den = den + amp * DOSE * np.exp(-((yy - fy) ** 2 + (xx - fx) ** 2) / (2 * s * s))
        dens.append(den.astype(np.float32))
        truths.append(cols["xy"])
    res = likelihood_map(torch.from_numpy(np.stack(raws)), torch.from_numpy(np.stack(dens)), _cfg())
    fake_llr, real_llr = [], []
    for b, (c, truth) in enumerate(zip(res.columns, truths, strict=True)):
        pos, llr = c.positions.numpy(), c.llr.numpy()
        is_fake = np.linalg.norm(pos[:, None] - fakes[None], axis=2).min(1) <= 1.5
        is_real = np.linalg.norm(pos[:, None] - truth[None], axis=2).min(1) <= 1.5
        assert is_fake.sum() == len(fakes) and is_real.sum() >= 0.9 * len(truth)
        assert not (is_fake & is_real).any()
        fake_llr += list(llr[is_fake])
        real_llr += list(llr[is_real])
        for fy, fx in fakes:  # the map carries each region's ratio
            i = int(np.argmin(np.linalg.norm(pos - [fy, fx], axis=1)))
            assert float(res.map[b, int(pos[i, 0]), int(pos[i, 1])]) == pytest.approx(float(llr[i]))
    f, r = np.array(fake_llr), np.array(real_llr)
    assert f.mean() < 0 < np.median(r)
    auc = (r[:, None] > f[None]).mean()
    assert auc > 0.9


def _cfg() -> LikelihoodConfig:
    return LikelihoodConfig(pixel_size_A=PX)


def test_polarity_enum_and_2d_input():
    _raw, den, _ = _frame(4, -0.35)
    d = torch.from_numpy(den)
    bright = detect_columns(d, LikelihoodConfig(pixel_size_A=PX, polarity=ColumnPolarity.bright))[0]
    dark = detect_columns(d, LikelihoodConfig(pixel_size_A=PX, polarity=ColumnPolarity.dark))[0]
    truth = torch.from_numpy(_frame(4, -0.35)[2]["xy"])
    near = [(torch.cdist(p, truth).min(1).values <= 1.5).float().mean().item() for p in (dark, bright)]
    assert near[0] > 0.9 and near[1] < 0.2  # dark columns found as such, not as the gaps between them
    arr = likelihood_map(torch.from_numpy(_raw), d, LikelihoodConfig(pixel_size_A=PX, polarity="dark"))
    table = arr.columns[0].as_array()
    assert table.shape == (len(dark), 4) and table.dtype == np.float32


def test_vacuum_override_equals_fixed_mode():
    raw, den, _ = _frame(6, 0.5)
    r, d = torch.from_numpy(raw)[None], torch.from_numpy(den)[None]
    fixed = LikelihoodStage(LikelihoodConfig(pixel_size_A=PX, vacuum_mode="fixed", vacuum_counts=0.47))(r, d)
    given = LikelihoodStage(LikelihoodConfig(pixel_size_A=PX))(r, d, vacuum=torch.tensor(0.47))
    assert float(given.vacuum[0]) == pytest.approx(0.47)
    assert torch.equal(fixed.map, given.map) and len(given.columns[0]) > 10


def test_cpu_banded_log_equals_conv2d_path_and_restores_threads():
    # the CPU path (banded GEMMs) and the CUDA path (conv2d) must agree; run both on CPU
    raw, den, _ = _frame(3, 0.5, shape=(150, 97))
    d = torch.from_numpy(np.stack([den, den[::-1].copy()]))
    cfg = LikelihoodConfig(pixel_size_A=PX)
    banded_stage, conv_stage = LikelihoodStage(cfg), LikelihoodStage(cfg)
    conv_stage._banded = False
    lam0 = torch.tensor([0.45, 0.5])
    a, b = banded_stage.response(d, lam0), conv_stage.response(d, lam0)
    assert banded_stage._banded and a.shape == b.shape == d.shape
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6 * float(b.abs().max()))
    assert torch.equal(banded_stage.detect(d, lam0), conv_stage.detect(d, lam0))
    before = torch.get_num_threads()
    LikelihoodStage(cfg, cpu_threads=before + 1)(torch.from_numpy(raw), torch.from_numpy(den))
    assert torch.get_num_threads() == before


def test_pattern_model_sees_a_column_whose_mean_is_vacuum() -> None:
    """A column near a contrast reversal (bright rim, dark core, mean over R = vacuum): the paper's
    constant model has nothing to test (LLR ~ 0 with either sign), the pattern model scores it positive
    on counts drawn from that pattern, and negative on counts drawn from vacuum."""
    from sbd_stream.compute.likelihood import ColumnModel

    vac, size = 4.0, 64
    yy, xx = np.mgrid[:size, :size] - size // 2
    r2 = (yy**2 + xx**2) / 4.0**2
    ring = vac * (1 + 0.6 * (r2 * np.exp(1 - r2) - 0.55 * np.exp(-r2 * 3)))
    ring *= vac / ring[r2 <= 1.0].mean()  # mean over the column's disk = vacuum (5 px radius = 0.5 A)
    den = torch.from_numpy(ring.astype(np.float32))[None]
    centre = torch.tensor([[0, size // 2, size // 2]])
    rng = np.random.default_rng(0)
    out = {}
    for model in ColumnModel:
        cfg = LikelihoodConfig(pixel_size_A=0.1, column_radius_A=0.4, column_model=model)
        stage = LikelihoodStage(cfg)
        lam0 = torch.tensor([vac])
        draws = {"real": lambda: rng.poisson(ring)[None], "fake": lambda: rng.poisson(vac, den.shape)}
        real, fake = (
            [stage.llr(torch.from_numpy(draws[k]()), den, centre, lam0)[0] for _ in range(200)]
            for k in ("real", "fake")
        )
        out[model] = (float(torch.cat(real).mean()), float(torch.cat(fake).mean()))
    assert abs(out[ColumnModel.constant][0]) < 0.5 and abs(out[ColumnModel.constant][1]) < 0.5, out
    assert out[ColumnModel.pattern][0] > 2.0 and out[ColumnModel.pattern][1] < -2.0, out
