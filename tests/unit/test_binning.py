"""Binning detector pixels to the engine's working pixel and interpolating back (compute/binning.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sbd_stream.compute.binning import (
    SamplingError,
    bin_counts,
    bin_factor,
    binned_shape,
    to_detector_coords,
    unbin,
    unbin_nearest,
)


@pytest.mark.parametrize(
    ("detector", "working", "k"),
    [(0.060, 0.24, 4), (0.060, 0.12, 2), (0.24, 0.24, 1), (0.061, 0.24, 4), (0.0495, 0.24, 5)],
)
def test_bin_factor_is_the_integer_ratio_within_tolerance(detector: float, working: float, k: int) -> None:
    assert bin_factor(detector, working) == k


def test_sampling_coarser_than_the_working_pixel_is_refused_naming_both_numbers() -> None:
    with pytest.raises(SamplingError, match=r"0\.3 A is coarser .* 0\.24 A"):
        bin_factor(0.30, 0.24)


def test_non_integer_ratio_is_refused_naming_both_numbers_and_the_misfit() -> None:
    with pytest.raises(SamplingError, match=r"0\.055 A does not divide .* 0\.24 A .* 8\.3 % off"):
        bin_factor(0.055, 0.24)
    assert bin_factor(0.055, 0.24, tolerance=0.1) == 4  # a looser policy accepts it


def test_binned_poisson_counts_keep_the_summed_mean_and_variance() -> None:
    """Sums of independent Poisson counts are Poisson: mean = variance = k^2 x the per-pixel rate."""
    rng = np.random.default_rng(0)
    lam = 0.45
    counts = torch.from_numpy(rng.poisson(lam, size=(4, 1024, 1024)).astype(np.uint16))
    binned = bin_counts(counts, 4).numpy().ravel()
    assert binned.shape == (4 * 256 * 256,)
    assert abs(binned.mean() / (16 * lam) - 1) < 0.005
    assert abs(binned.var() / (16 * lam) - 1) < 0.02
    # the count distribution itself is Poisson(7.2): compare a few probabilities
    from scipy.stats import poisson

    for n in (3, 7, 12):
        assert abs(np.mean(binned == n) - poisson.pmf(n, 16 * lam)) < 0.003


def test_binning_sums_exactly_and_pads_odd_sizes_by_reflection() -> None:
    x = torch.arange(2 * 9 * 10, dtype=torch.float32).reshape(2, 9, 10)
    b = bin_counts(x, 4)
    assert b.shape == (2, *binned_shape(9, 10, 4)) == (2, 3, 3)
    assert torch.equal(b[:, :2, :2], x[:, :8, :8].reshape(2, 2, 4, 2, 4).sum(dim=(2, 4)))
    assert torch.equal(bin_counts(x, 1), x)


def _band_limited(n: int, pixel_A: float, seed: int = 0) -> np.ndarray:
    """A clean image with the paper's 50 pm vibration envelope: lattice fringes + particle columns."""
    rng = np.random.default_rng(seed)
    k = np.fft.fftfreq(n, d=pixel_A)
    kx, ky = np.meshgrid(k, k)
    spec = np.fft.fft2(1.0 + 0.1 * rng.standard_normal((n, n)))
    sigma = 0.5  # A, RMS per axis
    spec *= np.exp(-2 * np.pi**2 * sigma**2 * (kx**2 + ky**2))
    return np.real(np.fft.ifft2(spec)).astype(np.float32)


@pytest.mark.parametrize("k", [2, 4])
def test_bin_then_unbin_reproduces_band_limited_images(k: int) -> None:
    """Vibration-limited images at 0.060 A survive 2x2 / 4x4 binning and bicubic return (>= 45 dB)."""
    from sbd_stream.compute.quality import paper_psnr

    clean = _band_limited(512, 0.060) * 0.45  # expected counts per detector pixel
    x = torch.from_numpy(clean)[None]
    back = unbin(bin_counts(x, k), k, clean.shape)[0].numpy()
    inner = (slice(16, -16), slice(16, -16))  # the periodic test image wraps; frame edges are reflected
    assert back.shape == clean.shape
    assert paper_psnr(back[inner], clean[inner]) >= 45.0
    assert abs(back.mean() / clean.mean() - 1) < 1e-3


def test_unbin_nearest_and_coordinates_map_block_centres() -> None:
    m = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    up = unbin_nearest(m, 4, (7, 8))
    assert up.shape == (1, 7, 8) and up[0, 0, 0] == 1 and up[0, 6, 7] == 4
    c = to_detector_coords(torch.tensor([[0.0, 1.0]]), 4, (7, 8))
    assert torch.allclose(c, torch.tensor([[1.5, 5.5]]))


@pytest.mark.parametrize("k", [2, 3, 4, 6])
@pytest.mark.parametrize("n", [96, 97, 98, 99, 100, 101])
def test_block_centres_are_the_centres_of_the_real_pixels_inside_the_frame(k: int, n: int) -> None:
    """Issue 25: bin 4 on a 101-row frame put the last block's centre at 101.5, outside the frame. Every
    block's centre is the mean index of its detector pixels that exist (the padding is reflection)."""
    blocks = torch.arange(-(-n // k), dtype=torch.float32)
    pos = torch.stack([blocks, torch.zeros_like(blocks)], dim=1)
    got = to_detector_coords(pos, k, (n, 5))[:, 0]
    want = torch.tensor([float(np.mean(np.arange(i * k, min((i + 1) * k, n)))) for i in range(len(blocks))])
    assert torch.equal(got, want)
    assert float(got.min()) >= 0 and float(got.max()) <= n - 1
    assert to_detector_coords(torch.tensor([[25.0, 25.0]]), 4, (101, 102)).tolist() == [[100.0, 100.5]]


DATA = Path(__file__).resolve().parents[1] / "data" / "abtem_clean_0p060A.npz"


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
@pytest.mark.parametrize("k", [2, 4])
def test_abtem_images_at_the_paper_sampling_survive_binning(k: int, mode: str) -> None:
    """abTEM images of Pt on CeO2 at 0.060 A (the paper's optics, explicit focal averaging, 50 pm
    vibration) at 0.45 counts/px: binned k x k and brought back, >= 45 dB on the paper's metric."""
    from sbd_stream.compute.quality import paper_psnr

    with np.load(DATA) as d:
        clean = d["images"] * 0.45
        assert float(d["pixel_size_A"]) == pytest.approx(0.060)
    back = unbin(bin_counts(torch.from_numpy(clean), k), k, clean.shape[1:], mode).numpy()
    m = 16  # frame borders are reflected, not image: judge the interior
    for b, c in zip(back, clean, strict=True):
        assert paper_psnr(b[m:-m, m:-m], c[m:-m, m:-m]) >= 45.0
    # and the frame edges are not broken either (reflection keeps them within a few dB)
    assert min(paper_psnr(b, c) for b, c in zip(back, clean, strict=True)) >= 40.0


def test_cpu_stages_upsample_bilinear_and_offline_bicubic_by_default(binning_engine_dir: Path) -> None:
    from sbd_stream.engines.denoiser import Denoiser
    from sbd_stream.service.batch import BatchStage

    den = Denoiser.load("torch", binning_engine_dir, device="cpu")
    assert BatchStage(den).upsample == "bilinear"  # auto on a CPU: the live budget
    assert BatchStage(den, upsample="bicubic").upsample == "bicubic"
    with pytest.raises(ValueError, match="bicubic or bilinear"):
        unbin(torch.ones(1, 4, 4), 2, (8, 8), "nearest")


def test_frames_too_small_for_columns_are_denoised_with_an_empty_map(
    binning_engine_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """At bin 4 a 64 x 64 frame is 16 working pixels a side, under the column finder's minimum: it used to
    fail the whole batch (nothing published); now it is denoised, with no columns, and said once."""
    from sbd_stream.config import DetectorSettings, LikelihoodSettings
    from sbd_stream.engines.denoiser import Denoiser
    from sbd_stream.frames import Frame
    from sbd_stream.protocol import FrameHeader
    from sbd_stream.service.batch import BatchStage

    def frames(side: int, n: int) -> list[Frame]:
        data = [rng.poisson(0.45, (side, side)).astype(np.uint16) for _ in range(n)]
        return [Frame(FrameHeader("a", i, 0.0, (side, side), "uint16"), d) for i, d in enumerate(data)]

    den = Denoiser.load("torch", binning_engine_dir, device="cpu")
    stage = BatchStage(den, DetectorSettings(pixel_size_A=0.06), LikelihoodSettings(enabled=True))
    assert stage.geometry.bin == 4 and stage.likelihood is not None
    assert stage.likelihood.min_side() > 16
    rng = np.random.default_rng(0)
    for _ in range(2):
        res = stage.process(frames(64, 3))
        assert res.denoised.shape == (3, 64, 64) and np.isfinite(res.denoised).all()
        assert res.likelihood is not None and not res.likelihood.any()
        assert res.columns is not None and [len(c) for c in res.columns] == [0, 0, 0]
    assert sum("too small to find atomic columns" in r.getMessage() for r in caplog.records) == 1
    big = stage.process(frames(256, 1))  # large frames: columns scored
    assert big.likelihood is not None and big.columns is not None and big.vacuum is not None
