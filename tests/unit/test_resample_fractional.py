"""Detector pixels that divide the working pixel by no integer are resampled by area, not refused.

Before: 0.1 A (0.24 / 0.1 = 2.4) raised ``SamplingError`` in ``plan_geometry`` and every caller of it
(``sbd-stream denoise`` / ``serve`` / ``FrameDenoiser``); ``compute/resample.py`` did not exist.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sbd_stream.compute.binning import (
    SamplingError,
    bin_counts,
    binned_shape,
    sampling_factor,
    to_detector_coords,
    unbin,
    unbin_nearest,
)
from sbd_stream.compute.resample import rebin_area
from sbd_stream.config import DetectorSettings
from sbd_stream.engines.card import load_card
from sbd_stream.service.batch import plan_geometry

RATIOS = {1.2: 100, 0.24 / 0.144: 72, 0.24 / 0.1: 50, 0.24 / 0.07: 35}
"""r (0.20, 0.144, 0.10, 0.07 A to 0.24 A) -> working pixels on a side of 120 detector pixels: all whole."""


def counts(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).poisson(0.45, shape).astype(np.float32))


@pytest.mark.parametrize(("r", "m"), RATIOS.items())
def test_area_rebinning_conserves_counts_and_keeps_a_constant_constant(r: float, m: int) -> None:
    x = counts((2, 120, 120))
    b = bin_counts(x, r)
    assert b.shape[1:] == binned_shape(120, 120, r) == (m, m)
    assert torch.allclose(b.sum(dim=(1, 2)), x.sum(dim=(1, 2)), rtol=1e-6)  # every count lands once
    assert binned_shape(121, 119, r) == (m + 1, m)  # a partial last working pixel is kept
    const = bin_counts(torch.full((1, 121, 127), 0.45), r)  # partial last pixels too: reflection
    assert torch.allclose(const, torch.full_like(const, 0.45 * r * r), rtol=1e-5)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("shape", [(48, 48), (49, 50), (51, 47)])
def test_an_integer_factor_through_the_area_path_is_exactly_bin_counts(
    k: int, shape: tuple[int, int]
) -> None:
    x = counts((2, *shape), seed=k)
    assert torch.equal(rebin_area(x, float(k)), bin_counts(x, k))


def test_upsampling_by_a_float_factor_samples_the_detector_pixel_centres() -> None:
    """Detector pixel i's centre (i + 1/2) d is working coordinate (i + 1/2) / r - 1/2: a linear ramp
    over working pixels comes back as that coordinate (bilinear exactly; Keys' a = -0.75 bicubic within
    0.06 of a pixel on a ramp, where a scale taken from the sizes or another origin is off by >= 0.2)."""
    r, h = 2.4, 20
    ramp = (
        torch.arange(h, dtype=torch.float32)[None, :, None].repeat(1, 1, h) * r * r
    )  # counts per working px
    want = (torch.arange(48, dtype=torch.float32) + 0.5) / r - 0.5
    inside = (want >= 1) & (want <= h - 2)  # away from the clamped edges (and bicubic's support)
    for mode, atol in (("bilinear", 1e-4), ("bicubic", 0.06)):
        up = unbin(ramp, r, (48, 48), mode)[0, :, 5]
        assert up.shape == (48,)
        assert torch.allclose(up[inside], want[inside], atol=atol), mode


def test_maps_and_column_centres_go_back_to_the_detector_pixels_they_cover() -> None:
    r = 2.4
    m = torch.arange(4, dtype=torch.float32).view(1, 2, 2)
    up = unbin_nearest(m, r, (4, 5))  # centres 0.5 .. 4.5 detector px: working pixel floor(c / 2.4)
    assert up[0, :, 0].tolist() == [0, 0, 2, 2] and up[0, 0].tolist() == [0, 0, 1, 1, 1]
    c = to_detector_coords(torch.tensor([[0.0, 1.0], [2.0, 2.0]]), r, (6, 7))
    # span [p r, (p + 1) r) cut at the frame's end, centre in pixel-index coordinates (- 1/2)
    want = torch.tensor([[0.7, 3.1], [(4.8 + 6) / 2 - 0.5, (4.8 + 7) / 2 - 0.5]])
    assert torch.allclose(c, want, atol=1e-6)


def test_fractional_samplings_are_served_and_coarser_ones_still_refused(binning_engine_dir: Path) -> None:
    assert sampling_factor(0.06, 0.24) == 4 and isinstance(sampling_factor(0.06, 0.24), int)
    assert sampling_factor(0.1, 0.24) == pytest.approx(2.4)
    card = load_card(binning_engine_dir)
    g = plan_geometry(DetectorSettings(pixel_size_A=0.1, dose_e_per_A2=125.0), card)
    assert g.bin == pytest.approx(2.4)
    assert g.vacuum_counts == pytest.approx(1.25 * 2.4**2) == pytest.approx(7.2)  # same dose per area
    assert g.dose_factor == pytest.approx(1.0) and g.describe()["bin"] == pytest.approx(2.4)
    with pytest.raises(SamplingError, match="coarser"):
        plan_geometry(DetectorSettings(pixel_size_A=0.3), card)


def test_a_fractional_batch_is_denoised_at_the_detector_shape(binning_engine_dir: Path) -> None:
    from sbd_stream.engines.denoiser import Denoiser
    from sbd_stream.service.frames import FrameDenoiser

    den = Denoiser.load("torch", binning_engine_dir, "cpu")
    fd = FrameDenoiser(0.1, dose_e_per_A2=125.0, orientations=1, denoiser=den, likelihood=True)
    frames = counts((2, 97, 130)) * (1.25 / 0.45)
    res = fd.process(frames.numpy())
    assert res.denoised.shape == (2, 97, 130) and np.isfinite(res.denoised).all()
    assert res.likelihood is not None and res.likelihood.shape == (2, 97, 130)
    assert fd.describe()["bin"] == pytest.approx(2.4)


DATA = Path(__file__).resolve().parents[1] / "data" / "abtem_clean_0p060A.npz"


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
@pytest.mark.parametrize("pixel", [0.07, 0.1, 0.2])
def test_abtem_images_at_a_fractional_sampling_survive_resampling(pixel: float, mode: str) -> None:
    """The clean abTEM images (0.060 A, vacuum 1) resampled by area to ``pixel`` at 125 e/A^2, down to
    0.24 A and back: on the paper's metric (per 0.060 A of area) as close as the integer bins come
    (bin 2 at 0.12 A: 62.5 / 55.4 dB bicubic / bilinear on the worst image). The 384-px frames leave
    a partial last pixel at every step, so an upsampling scale taken from the sizes (231 / 97 at 0.1
    A, not 2.4) shifts the far side by 0.8 working pixels and fails this."""
    from sbd_stream.compute.quality import paper_psnr

    with np.load(DATA) as d:
        clean = torch.from_numpy(d["images"])
    truth = rebin_area(clean, pixel / 0.060) * 0.45  # counts per detector pixel
    r, s = 0.24 / pixel, (0.060 / pixel) ** 2
    back = unbin(bin_counts(truth, r), r, tuple(truth.shape[1:]), mode)
    m = round(1.0 / pixel)  # frame edges are reflected, not image: judge the interior
    worst = min(
        paper_psnr(b[m:-m, m:-m].numpy() * s, t[m:-m, m:-m].numpy() * s)
        for b, t in zip(back, truth, strict=True)
    )
    assert worst >= (60.0 if mode == "bicubic" else 52.0)
