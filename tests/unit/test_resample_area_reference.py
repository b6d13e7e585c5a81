"""``rebin_area`` against a slow, independent area resampling (pixel-by-pixel overlaps in float64).

Session 32 replaced the per-overlap gathers (43-132 ms a K2 frame on 2 cores) by one batched block
product per side for factors with a short period (r = q / p: p working pixels span q detector pixels)
and a small dense tail for the last working pixels (reflection folded in). These tests pin the result to
the definition, not to either implementation: working pixel j covers detector coordinates [j r, (j + 1)
r), each detector pixel adds its counts times the overlapped length per axis (the area, for a product of
intervals), and pixels past the frame's end are pixel 2 (n - 1) - i (clamped to the frame).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sbd_stream.compute.resample import axis_plan, rebin_area, rebinned_side

RATIOS = [
    0.24 / 0.2,
    0.24 / 0.144,
    0.24 / 0.1,
    0.24 / 0.07,
    0.24 / 0.09,
    0.24 / 0.13,
    0.24 / 0.19,
    0.24 / 0.22,
    0.24 / 0.1037,  # no short period: the gather path
    1.5,
]
SHAPES = [(1, 1), (2, 3), (5, 7), (13, 29), (24, 48), (61, 97), (120, 121), (131, 96)]


def weights(n: int, r: float) -> np.ndarray:
    """(m, n) float64: working pixel j's overlap with detector pixel i, one pixel pair at a time."""
    m = max(1, math.ceil(n / r - 1e-9))
    w = np.zeros((m, n))
    for j in range(m):
        lo, hi = j * r, (j + 1) * r
        for i in range(math.floor(lo), math.ceil(hi)):
            overlap = min(i + 1, hi) - max(i, lo)
            if overlap > 1e-9:  # an edge within floating-point error of a pixel border touches nothing
                src = min(max(2 * (n - 1) - i if i >= n else i, 0), n - 1)
                w[j, src] += overlap
    return w


def reference(x: np.ndarray, r: float) -> np.ndarray:
    wy, wx = weights(x.shape[-2], r), weights(x.shape[-1], r)
    return wy @ x.astype(np.float64) @ wx.T


def frames(shape: tuple[int, int], seed: int, lam: float = 2.0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.poisson(lam, (2, *shape)).astype(np.float32))


@pytest.mark.parametrize("r", RATIOS, ids=lambda r: f"r{r:.4f}")
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_area_resampling_equals_the_pixel_by_pixel_overlaps(r: float, shape: tuple[int, int]) -> None:
    """Every working pixel, edges included, within float32 rounding (observed <= 2e-7 relative)."""
    x = frames(shape, seed=shape[0] * 1000 + shape[1])
    got = rebin_area(x, r)
    want = reference(x.numpy(), r)
    assert got.dtype == torch.float32
    assert tuple(got.shape) == (2, rebinned_side(shape[0], r), rebinned_side(shape[1], r)) == want.shape
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("pixel", [*(i / 100 for i in range(7, 23)), 0.144], ids=lambda d: f"{d:.3f}A")
def test_the_usual_fractional_pixels_take_the_block_product_on_a_k2_frame(pixel: float) -> None:
    """0.07-0.22 A (0.01 A steps) and 0.144 A for 0.24 A repeat within 22 working pixels, so the fast
    path serves them (and the tests above check it); a calibrated 0.1037 A does not."""
    r = 0.24 / pixel
    for n in (3838, 3710):
        plan = axis_plan(n, r)
        assert plan is not None and plan.p <= 22 and plan.periods == n // plan.q
        assert abs(plan.q / plan.p - r) < 1e-12
    assert axis_plan(3838, 0.24 / 0.1037) is None


@pytest.mark.parametrize("r", [0.24 / 0.2, 0.24 / 0.1, 0.24 / 0.144, 0.24 / 0.13])
def test_a_large_non_square_frame_equals_the_reference_and_keeps_the_dose(r: float) -> None:
    """Many whole periods and a tail on both sides (the block product's batch and the tail's seam):
    the counts over the covered area [0, m r)^2 of the reflected frame land once."""
    x = frames((389, 302), seed=7, lam=0.45)
    got = rebin_area(x, r)
    np.testing.assert_allclose(got.numpy(), reference(x.numpy(), r), rtol=1e-6, atol=1e-6)
    covered = []
    for n in x.shape[1:]:
        span = rebinned_side(n, r) * r  # covered length, past the frame's end by less than r
        ext = np.arange(math.ceil(span - 1e-9))
        src = np.where(ext >= n, 2 * (n - 1) - ext, ext)
        length = np.minimum(ext + 1, span) - ext  # 1, the last one the covered fraction
        covered.append((src, length))
    (sy, ly), (sx, lx) = covered
    dose = ly @ x.numpy().astype(np.float64)[:, sy][:, :, sx] @ lx
    np.testing.assert_allclose(got.double().sum(dim=(1, 2)).numpy(), dose, rtol=1e-6)


@pytest.mark.parametrize("r", [0.24 / 0.2, 0.24 / 0.1])
def test_views_and_integer_frames_are_resampled_as_their_float_copies(r: float) -> None:
    """A crop, a transposed frame and uint16 counts (as frames arrive) go through the block views."""
    x = frames((150, 170), seed=3)
    for v in (x[:, 7:140, 3:160], x.transpose(1, 2), x[:, ::2, ::3], x.to(torch.uint16)[:, 1:, 2:]):
        got = rebin_area(v, r)
        assert got.dtype == torch.float32
        np.testing.assert_allclose(got.numpy(), reference(v.numpy(), r), rtol=1e-6, atol=1e-6)


def test_a_result_outlives_the_next_call_of_the_same_shape() -> None:
    """The row pass's buffer is reused per thread: what a call returns must not share it."""
    x1, x2 = frames((61, 97), seed=1), frames((61, 97), seed=2)
    first = rebin_area(x1, 2.4)
    rebin_area(x2, 2.4)
    np.testing.assert_allclose(first.numpy(), reference(x1.numpy(), 2.4), rtol=1e-6, atol=1e-6)
