"""Likelihood behaviour users rely on that the other tests left unpinned (mutation round 28).

Each test names the documented rule (docs/likelihood.md) it holds: the response is in units of each
frame's own vacuum level, columns are the maxima of a full (2 m + 1)^2 window, both rates are floored at
``min_rate``, masked pixels leave every region they fall in, the LoG reads a masked pixel as vacuum,
a frame too small for the kernels is a ``ValueError``, every frame of a batch gets its (possibly empty)
column list, and ``FrameColumns.as_array`` is [row, col, llr, region_mean].
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sbd_stream.compute.evidence import evidence_counts, evidence_plan
from sbd_stream.compute.likelihood import (
    LikelihoodConfig,
    LikelihoodStage,
    detect_columns,
    disk_offsets,
    likelihood_map,
)

PX = 0.24  # the shipped engines' working pixel
DOSE = 7.2  # their vacuum counts per working pixel
CENTRES = [(r, c) for r in range(80, 180, 12) for c in range(80, 180, 12)]  # 81 columns


def _clean(centres: list[tuple[int, int]], amp: float, shape: tuple[int, int] = (256, 256)) -> np.ndarray:
    """Vacuum 1 with Gaussian columns (sigma 2 px) of contrast ``amp``."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    clean = np.ones(shape, np.float32)
    for r, c in centres:
        clean += amp * np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * 2.0**2))
    return clean


def _lattice(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    clean = _clean(CENTRES, 0.8)
    raw = np.random.default_rng(seed).poisson(clean * DOSE).astype(np.float32)
    return torch.from_numpy(raw), torch.from_numpy(clean * DOSE)


def test_the_threshold_is_in_units_of_each_frames_own_vacuum_level() -> None:
    """Two frames of one batch, the same specimen at 1x and 10x dose: the same columns in both.

    The response is divided by the frame's own level; divided by one level for the batch, the weak
    columns (response ~0.1, threshold 0.05) of the low-dose frame fall under the threshold."""
    clean = _clean(CENTRES, 0.2)
    den = torch.from_numpy(np.stack([clean * 1.0, clean * 10.0]))
    cfg = LikelihoodConfig(pixel_size_A=PX)
    found = detect_columns(den, cfg, vacuum=[1.0, 10.0])
    assert [len(f) for f in found] == [81, 81]
    assert torch.equal(found[0], found[1])
    res = likelihood_map(den, den, cfg, vacuum=[1.0, 10.0])
    assert [len(c) for c in res.columns] == [81, 81]


def test_a_weaker_column_exactly_min_distance_away_does_not_hide_the_stronger_one() -> None:
    """A column is the maximum of its whole (2 m + 1)^2 window: a weaker peak m pixels before a stronger
    one (row-major) is no column, and the stronger one is found."""
    cfg = LikelihoodConfig(pixel_size_A=PX, min_distance_A=2.4)  # m = 10 px
    m = cfg.min_distance_px
    assert m == 10
    weak, strong = (60, 60), (60, 60 + m)
    # nearly as strong: its peak response tops everything but the stronger column's very centre
    den = _clean([weak], 0.74, (128, 128)) + _clean([strong], 0.8, (128, 128)) - 1.0
    found = detect_columns(torch.from_numpy(den), cfg, vacuum=1.0)[0]
    assert found.tolist() == [[float(strong[0]), float(strong[1])]]


def test_the_region_mean_is_floored_at_min_rate_so_a_black_column_scores_finitely() -> None:
    """docs: both rates are floored at ``min_rate``. A dark column whose denoised region is 0 (a network
    may return 0 or less) with no raw counts there: lam1 = min_rate, LLR finite and strongly positive."""
    cfg = LikelihoodConfig(pixel_size_A=PX, polarity="dark", vacuum_mode="fixed", vacuum_counts=DOSE)
    den = np.full((96, 96), DOSE, np.float32)
    yy, xx = np.mgrid[0:96, 0:96]
    hole = (yy - 48) ** 2 + (xx - 48) ** 2 <= 9
    den[hole] = 0.0
    raw = np.random.default_rng(3).poisson(den).astype(np.float32)
    res = likelihood_map(raw, den, cfg)
    cols = res.columns[0]
    i = [tuple(p) for p in cols.positions.tolist()].index((48.0, 48.0))
    assert cols.region_mean[i].item() == pytest.approx(cfg.min_rate)
    assert math.isfinite(cols.llr[i].item()) and cols.llr[i].item() > 0
    assert bool(torch.isfinite(res.map).all())


def test_a_masked_raw_pixel_beside_a_column_leaves_its_region_only() -> None:
    """A NaN raw pixel one pixel from a column's centre (nonfinite="mask"): that column is still scored,
    on one pixel fewer, exactly as the closed form over the remaining pixels."""
    raw, den = _lattice()
    stage = LikelihoodStage(LikelihoodConfig(pixel_size_A=PX))
    ref = stage(raw, den, vacuum=DOSE)
    r = raw.clone()
    r[128, 129] = math.nan  # beside the column at (128, 128)
    res = stage(r, den, vacuum=DOSE, nonfinite="mask")
    cols = res.columns[0]
    assert len(cols) == 81 and bool(torch.isfinite(cols.llr).all()) and bool(torch.isfinite(res.map).all())
    i = [tuple(p) for p in cols.positions.tolist()].index((128.0, 128.0))
    n_disk = len(disk_offsets(stage.cfg.radius_px))
    assert cols.n_pixels[i].item() == n_disk - 1 == ref.columns[0].n_pixels[i].item() - 1
    assert cols.raw_sum[i].item() == pytest.approx(ref.columns[0].raw_sum[i].item() - raw[128, 129].item())
    k, n, lam1 = cols.raw_sum[i].item(), cols.n_pixels[i].item(), cols.region_mean[i].item()
    want = k * math.log(lam1 / DOSE) - n * (lam1 - DOSE)
    assert cols.llr[i].item() == pytest.approx(want, rel=1e-4)


def test_a_masked_denoised_pixel_in_vacuum_is_read_as_vacuum_and_adds_no_column() -> None:
    """docs: the LoG reads a masked pixel as the frame's vacuum level: a NaN denoised pixel in vacuum,
    far from every column, changes neither the columns nor their scores."""
    raw, den = _lattice()
    stage = LikelihoodStage(LikelihoodConfig(pixel_size_A=PX))
    ref = stage(raw, den, vacuum=DOSE)
    d = den.clone()
    d[30, 30] = math.nan
    d[220, 40] = math.nan
    res = stage(raw, d, vacuum=DOSE, nonfinite="mask")
    assert torch.equal(res.columns[0].positions, ref.columns[0].positions)
    torch.testing.assert_close(res.columns[0].llr, ref.columns[0].llr)


def test_a_frame_smaller_than_the_kernels_need_is_a_value_error() -> None:
    """The LoG mirror-pads by the kernel radius, which needs a side of radius + 1: a frame of side
    ``kernel_radius_px`` is refused with the documented ValueError, one pixel more is scored."""
    cfg = LikelihoodConfig(pixel_size_A=PX, vacuum_mode="fixed", vacuum_counts=1.0)
    r = cfg.kernel_radius_px
    with pytest.raises(ValueError, match=rf"at least {r + 1} pixels on a side"):
        likelihood_map(np.ones((r, r), np.float32), np.ones((r, r), np.float32), cfg)
    ok = likelihood_map(np.ones((r + 1, r + 1), np.float32), np.ones((r + 1, r + 1), np.float32), cfg)
    assert ok.map.shape == (1, r + 1, r + 1)


def test_every_frame_of_a_batch_gets_its_column_list_even_the_last_empty_one() -> None:
    """detect_columns and the stage return one entry per frame, in order; a trailing frame of vacuum
    gets an empty (0, 2) entry, not none."""
    clean = _clean(CENTRES, 0.8)
    den = torch.from_numpy(np.stack([clean * DOSE, np.full_like(clean, DOSE)]))
    cfg = LikelihoodConfig(pixel_size_A=PX)
    found = detect_columns(den, cfg, vacuum=DOSE)
    assert [tuple(f.shape) for f in found] == [(81, 2), (0, 2)]
    res = likelihood_map(den, den, cfg, vacuum=DOSE)
    assert [len(c) for c in res.columns] == [81, 0]


def test_as_array_is_row_col_llr_region_mean() -> None:
    """The (K, 4) table the pipeline publishes: [row, col, llr, region_mean], row first."""
    clean = _clean([(40, 100)], 0.8, (128, 160))
    den = torch.from_numpy(clean * DOSE)
    raw = torch.from_numpy(np.random.default_rng(1).poisson(clean * DOSE).astype(np.float32))
    cols = likelihood_map(raw, den, LikelihoodConfig(pixel_size_A=PX), vacuum=DOSE).columns[0]
    assert len(cols) == 1
    table = cols.as_array()
    assert table.shape == (1, 4) and table.dtype == np.float32
    assert table[0, :2].tolist() == [40.0, 100.0]
    assert table[0, 2] == pytest.approx(cols.llr[0].item()) and table[0, 3] == pytest.approx(
        cols.region_mean[0].item()
    )


@pytest.mark.parametrize("dtype", [">f4", ">u2", "uint32"])
def test_big_endian_and_uint32_frames_score_as_native_float_ones(dtype: str) -> None:
    """Frames read from files (big-endian HDF5 / FITS data, a detector's uint32 counts) are array-likes
    the docs accept: they give the native float32 result bit for bit."""
    raw, den = _lattice()
    cfg = LikelihoodConfig(pixel_size_A=PX)
    ref = likelihood_map(raw, den, cfg, vacuum=DOSE)
    res = likelihood_map(raw.numpy().astype(dtype), den, cfg, vacuum=DOSE)
    assert torch.equal(res.map, ref.map)
    assert torch.equal(res.columns[0].raw_sum, ref.columns[0].raw_sum)


def test_raw_and_denoised_of_different_shapes_are_refused_by_name() -> None:
    """Raw and denoised must be of one shape; equal widths are not enough."""
    cfg = LikelihoodConfig(pixel_size_A=PX)
    with pytest.raises(ValueError, match=r"raw \(64, 64\) and denoised \(48, 64\) differ"):
        likelihood_map(np.ones((64, 64), np.float32), np.ones((48, 64), np.float32), cfg, vacuum=1.0)
    with pytest.raises(ValueError, match=r"raw \(2, 64, 64\) and denoised \(64, 64\) differ"):
        likelihood_map(np.ones((2, 64, 64), np.float32), np.ones((64, 64), np.float32), cfg, vacuum=1.0)


@pytest.mark.parametrize("level", [math.inf, -math.inf, math.nan])
def test_an_infinite_vacuum_level_either_way_is_refused_and_scores_nothing_on_the_device_path(
    level: float,
) -> None:
    """docs: a NaN / Inf level is a ValueError; the device path (which never raises) scores no columns
    for it. Floored naively, -inf would become ``min_rate`` and every pixel a column."""
    raw, den = _lattice()
    stage = LikelihoodStage(LikelihoodConfig(pixel_size_A=PX))
    with pytest.raises(ValueError, match=r"^vacuum has 1 non-finite level"):
        stage(raw, den, vacuum=level)
    with pytest.raises(ValueError, match=r"^vacuum has 1 non-finite level"):
        detect_columns(den, stage.cfg, vacuum=level)
    d = stage.compute(raw, den, vacuum=level)
    assert d.centres.shape[0] == 0 and not bool(torch.isfinite(d.lam0).any())


def test_a_blank_frame_is_never_evidence_even_at_the_scored_frames_level() -> None:
    """docs (Blank frames): a blank frame is never evidence for another frame, whatever its level
    (here a weak frame scored against a blank one of nearly its own level, inside the dose band)."""
    counts = torch.tensor([0.009, 0.0095]).reshape(2, 1, 1).expand(2, 2, 2).clone()
    level = counts.mean(dim=(1, 2))
    blank = torch.tensor([True, False])
    scored, scale, used, left = evidence_counts(counts, [[0]], 1, level, blank)
    assert used.tolist() == [0.0] and left.tolist() == [1.0] and scale.tolist() == [1.0]
    assert torch.equal(scored[0], counts[1])


def test_the_plan_reaches_up_to_twice_n_sequence_numbers_away() -> None:
    """A dropped frame or two does not disqualify a neighbour: candidates at most 2 n away."""
    assert evidence_plan(["a", "a"], [0, 4], 2) == [[1], [0]]
    assert evidence_plan(["a", "a"], [0, 5], 2) == [[], []]


def test_an_explicit_evidence_radius_is_kept_on_own_counts() -> None:
    """own_frame_config swaps the radius back to 0.7 A only where it is the evidence *default* (1.25 A
    with the default detection scale); a 1.25 A radius given explicitly (own LoG scale) is kept."""
    from sbd_stream.compute.evidence import DETECTION_SIGMA_A, EVIDENCE_RADIUS_A, own_frame_config

    explicit = LikelihoodConfig(pixel_size_A=PX, column_radius_A=EVIDENCE_RADIUS_A, column_model="pattern")
    own = own_frame_config(explicit)
    assert own is not None
    assert own.column_model.value == "constant" and own.column_radius_A == EVIDENCE_RADIUS_A
    assert own.log_sigma_A is None and own.sigma_px == explicit.sigma_px
    default = LikelihoodConfig(
        pixel_size_A=PX,
        column_radius_A=EVIDENCE_RADIUS_A,
        log_sigma_A=DETECTION_SIGMA_A,
        column_model="pattern",
    )
    own = own_frame_config(default)
    assert own is not None and own.column_radius_A == 0.7 and own.sigma_px == pytest.approx(default.sigma_px)


def test_the_llr_header_says_how_many_evidence_frames_scored_the_columns() -> None:
    """``meta.evidence_frames`` is the number of other frames summed (the LLR's scale), not a flag."""
    from sbd_stream.llr_table import llr_columns

    table = np.array([[1.0, 2.0, 3.14159, 7.2]], np.float32)
    for n in (0, 1, 4):
        meta, rows = llr_columns(table, evidence_frames=n, vacuum_counts=7.2)
        assert meta["evidence_frames"] == n and meta["n_columns"] == 1 and meta["vacuum_counts"] == 7.2
    assert rows == [[1.0, 2.0, 3.142, 7.2]]
