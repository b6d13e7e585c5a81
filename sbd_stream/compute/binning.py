"""Detector sampling <-> the engine's working pixel: sum counts down, band-limited interpolation back up.

Why binning is free: a counting detector oversamples (0.060 A pixels in the paper, chosen to keep the
count rate per pixel low, not to resolve detail), while the 50 pm vibration envelope leaves under 1 % of
the image's contrast above 1 A^-1. Summing k x k detector pixels keeps the counts exactly Poisson (a sum
of independent Poisson variables is Poisson), keeps the dose per A^2, and cuts the pixels the network
must see by k^2; a 0.24 A working pixel still has its Nyquist frequency at 2.1 A^-1.

Why this interpolation on the way back: the denoised working-pixel image is a smooth, band-limited
estimate of the mean count; each binned value is the *area average* over its k x k block, i.e. a sample
at the block centre of the image convolved with a k-pixel box. Bicubic convolution (Keys, a = -0.75) at
the detector pixel centres reproduces a band-limited image to well below the noise (tests: >= 45 dB on
the paper's metric for abTEM images binned 4x4 at 0.060 A), is local (no wrap-around ringing from a
Fourier method at frame edges, which specimens and vacuum meet), and is a single fused kernel on any
device. Counts are divided by k^2 so the result is in counts per *detector* pixel, as the raw frame.

Frames whose sides are not multiples of k are padded by reflection before binning, and interpolated
back at the frame's own size (the samples of the padded grid, cropped), so every working pixel is a
full k x k block (same statistics everywhere) and the geometry stays a regular grid; the reflected
pixels only ever influence the cropped-away band.

A detector pixel that divides the working pixel by no integer within tolerance (0.1 A for 0.24 A) but
is finer than it is served by area-weighted resampling by the float factor r = w / d
(``compute/resample.py``): every function here takes the factor as an int k (the integer path, exactly
as before) or a float r (``sampling_factor`` decides which).
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from sbd_stream.compute.resample import (
    area_to_detector,
    rebin_area,
    rebinned_side,
    result_buffer,
    unbin_area,
    unbin_area_nearest,
)
from sbd_stream.compute.settings_defaults import DEFAULT_TOLERANCE  # re-exported (torch-free for config.py)


class SamplingError(ValueError):
    """A detector sampling the engine cannot serve (coarser than its working pixel, or no integer bin)."""


def bin_factor(detector_pixel_A: float, working_pixel_A: float, tolerance: float = DEFAULT_TOLERANCE) -> int:
    """The integer k with k x detector pixel = working pixel, within ``tolerance`` (relative); else raise.

    A mismatch within tolerance only rescales the image by that fraction, which the network tolerates
    (it was trained with rescaling); beyond it, columns would be the wrong size for the engine, so the
    service refuses at start rather than denoise wrongly.
    """
    if detector_pixel_A <= 0 or working_pixel_A <= 0:
        raise SamplingError(
            f"pixel sizes must be positive (detector {detector_pixel_A} A, engine {working_pixel_A} A)"
        )
    ratio = working_pixel_A / detector_pixel_A
    k = max(1, round(ratio))
    mismatch = abs(k * detector_pixel_A / working_pixel_A - 1.0)
    if ratio < 1.0 - tolerance:
        raise SamplingError(
            f"detector pixel {detector_pixel_A:.4g} A is coarser than the engine's working pixel "
            f"{working_pixel_A:.4g} A: this engine cannot serve it (use an engine trained at >= "
            f"{detector_pixel_A:.4g} A, or a finer detector sampling)"
        )
    if mismatch > tolerance:
        raise SamplingError(
            f"detector pixel {detector_pixel_A:.4g} A does not divide the engine's working pixel "
            f"{working_pixel_A:.4g} A (ratio {ratio:.3f}; nearest bin {k} gives "
            f"{k * detector_pixel_A:.4g} A, {100 * mismatch:.1f} % off, tolerance {100 * tolerance:.1f} %)"
        )
    return k


def sampling_factor(
    detector_pixel_A: float, working_pixel_A: float, tolerance: float = DEFAULT_TOLERANCE
) -> int | float:
    """``bin_factor``'s integer k where it serves; else the float r = working / detector pixel, to be
    served by area-weighted resampling; a detector pixel coarser than the working pixel still raises."""
    try:
        return bin_factor(detector_pixel_A, working_pixel_A, tolerance)
    except SamplingError:
        ratio = working_pixel_A / detector_pixel_A if detector_pixel_A > 0 and working_pixel_A > 0 else 0.0
        if ratio < 1.0 - tolerance:
            raise
        return float(ratio)


def is_fractional(k: int | float) -> bool:
    """A factor served by area-weighted resampling (no integer bin): any non-integral value."""
    return not float(k).is_integer()


def binned_shape(height: int, width: int, k: int | float) -> tuple[int, int]:
    if is_fractional(k):
        return rebinned_side(height, float(k)), rebinned_side(width, float(k))
    k = int(k)
    return math.ceil(height / k), math.ceil(width / k)


def _pad_to_multiple(x: torch.Tensor, k: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph, pw = -h % k, -w % k
    if not (ph or pw):
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x.unsqueeze(1), (0, pw, 0, ph), mode=mode).squeeze(1)


def _strided_sum(x: torch.Tensor, k: int) -> torch.Tensor:
    """(B, k h, k w) -> (B, h, w) block sums.

    k strided adds per axis (columns, then rows): each a plain vectorised pass over memory. A reduction
    over a trailing axis of length k (``reshape(..., k).sum(-1)``) is ~10x slower on a CPU (a 1024^2
    frame at k = 4: ~4 vs ~45 ms on 2 loaded cores). Sums of counts are exact in float32, and each block
    is summed in the same order wherever it lies, so a block's sum does not depend on the slab it is in.
    """
    cols = x[..., 0::k] + x[..., 1::k]
    for j in range(2, k):
        cols += x[..., j::k]
    rows = cols[:, 0::k] + cols[:, 1::k]
    for j in range(2, k):
        rows += cols[:, j::k]
    return rows


def bin_counts(frames: torch.Tensor, k: int | float) -> torch.Tensor:
    """(B, H, W) counts -> (B, ceil(H/k), ceil(W/k)) float32 sums over k x k detector pixels.

    A fractional k: ``rebin_area`` (area-weighted sums; see the module docstring).

    A side that is not a multiple of k: the whole blocks are summed straight from the frame and only the
    last block row / column from a padded (k + r)-wide slab at the far edge. Reflection looks back fewer
    than k pixels, so the slab's padding is the whole frame's; padding the whole frame copied all of it
    for 2 rows and 2 columns (24 ms of a K2 frame's 69). Frames under 2 k a side pad the whole frame.
    """
    if frames.ndim != 3:
        raise ValueError(f"expected (B, H, W) frames, got shape {tuple(frames.shape)}")
    if is_fractional(k):
        return rebin_area(frames, float(k))
    k = int(k)
    x = frames.to(torch.float32)
    if k == 1:
        return x
    h, w = x.shape[-2:]
    rh, rw = h % k, w % k
    if not (rh or rw) or h < 2 * k or w < 2 * k:
        return _strided_sum(_pad_to_multiple(x, k), k)
    h0, w0 = h - rh, w - rw
    out = x.new_empty((x.shape[0], -(-h // k), -(-w // k)))
    out[:, : h0 // k, : w0 // k] = _strided_sum(x[:, :h0, :w0], k)
    if rh:  # the slab's padding is the frame's: ``_pad_to_multiple`` on k + rh rows pads as many
        out[:, -1, :] = _strided_sum(_pad_to_multiple(x[:, h0 - k :, :], k), k)[:, -1, :]
    if rw:
        out[:, :, -1] = _strided_sum(_pad_to_multiple(x[:, :, w0 - k :], k), k)[:, :, -1]
    return out


SMALL_OUTPUT = 128
"""Outputs with H + W at most this are interpolated at the padded size and cropped, as before: for them
ATen's CPU bilinear upsampling picks another kernel by output size (its ``_use_vectorized_kernel_cond_2d``),
which rounds differently in the last bit, so asking for (H, W) directly would change a few values."""


def unbin(
    binned: torch.Tensor, k: int | float, shape: tuple[int, int], mode: str = "bicubic"
) -> torch.Tensor:
    """(B, h, w) counts per working pixel -> (B, H, W) counts per detector pixel (see above).

    ``mode`` bicubic (default) or bilinear: on abTEM frames at 0.060 A binned 4 x 4, bicubic returns the
    clean frame within ~64 dB (paper metric) and bilinear within ~55 dB, both far below a denoiser's
    error (~40 dB); bilinear costs 0.8 instead of 4 ms per 1024^2 frame on 2 CPU cores. A fractional k:
    the same interpolation with the float scale (``unbin_area``).
    """
    if is_fractional(k):
        return unbin_area(binned, float(k), shape, mode)
    k = int(k)
    if k == 1:
        return binned[..., : shape[0], : shape[1]]
    if mode not in ("bicubic", "bilinear"):
        raise ValueError(f"upsampling mode must be bicubic or bilinear, got {mode!r}")
    per_px = binned.to(torch.float32).unsqueeze(1) / float(k * k)
    if shape[0] + shape[1] <= SMALL_OUTPUT:
        up = F.interpolate(per_px, scale_factor=k, mode=mode, align_corners=False)
        return up[:, 0, : shape[0], : shape[1]].contiguous()
    # ``F.interpolate(scale_factor=k)`` then a crop to (H, W) gives the same samples: with the scale given,
    # a pixel's source coordinate does not depend on the output size. But the crop was a strided view
    # that every consumer copied (22 ms per K2 frame); asked for (H, W) at scale k, the result is
    # contiguous and the padding band is never computed.
    # A K2 frame is 57 MB: written into an earlier result's memory once released (resample.result_buffer),
    # not fresh pages (~24 ms of first-touch faults a frame)
    op = torch.ops.aten.upsample_bilinear2d if mode == "bilinear" else torch.ops.aten.upsample_bicubic2d
    size, scale = [shape[0], shape[1]], float(k)
    if per_px.requires_grad and torch.is_grad_enabled():  # out= records no gradient
        return op.default(per_px, size, False, scale, scale)[:, 0]
    out = result_buffer((per_px.shape[0], 1, *size), per_px.device)
    return op.out(per_px, size, False, scale, scale, out=out)[:, 0]


def unbin_nearest(binned: torch.Tensor, k: int | float, shape: tuple[int, int]) -> torch.Tensor:
    """Working-pixel values repeated over their k x k block (for maps that are piecewise constant).

    Written straight into a contiguous (B, H, W) frame: two ``repeat_interleave`` and a crop that the
    caller's flatten copied were three full-size passes (58 vs 28 ms per K2 frame). A fractional k: each
    detector pixel takes the working pixel that holds its centre.
    """
    if is_fractional(k):
        return unbin_area_nearest(binned, float(k), shape)
    k = int(k)
    if k == 1:
        return binned[..., : shape[0], : shape[1]]
    big_h, big_w = shape
    h0, w0 = big_h - big_h % k, big_w - big_w % k
    if binned.ndim != 3 or tuple(binned.shape[1:]) != binned_shape(big_h, big_w, k) or not (h0 and w0):
        up = binned.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)
        return up[..., :big_h, :big_w].contiguous()
    n = binned.shape[0]
    out = binned.new_empty((n, big_h, big_w))
    blocks = out[:, :h0, :w0].unflatten(2, (w0 // k, k)).unflatten(1, (h0 // k, k))
    blocks.copy_(binned[:, : h0 // k, None, : w0 // k, None].expand(n, h0 // k, k, w0 // k, k))
    if h0 < big_h:  # the partial last block row, then the partial last block column (its corner too)
        out[:, h0:, :w0] = binned[:, -1:, : w0 // k].repeat_interleave(k, dim=-1)
    if w0 < big_w:
        out[:, :, w0:] = binned[:, :, -1:].repeat_interleave(k, dim=-2)[:, :big_h]
    return out


def to_detector_coords(positions: torch.Tensor, k: int | float, shape: tuple[int, int]) -> torch.Tensor:
    """Working-pixel [row, col] centres -> detector pixel coordinates: the centre of the block's pixels
    that lie inside the (H, W) detector frame.

    A full block i spans detector pixels i k .. i k + k - 1, centre (i + 1/2) k - 1/2. When a side is not
    a multiple of k, the last block is partly padding (``bin_counts`` reflects the frame into it): its
    centre is that of its real pixels, so every centre lies inside the frame (a 101-row frame at k = 4:
    block 25 holds row 100 only, centre 100, not 101.5). A fractional k: the same rule on the span
    [p k, (p + 1) k) in continuous detector coordinates (``area_to_detector``).
    """
    if is_fractional(k):
        return area_to_detector(positions, float(k), shape)
    k = int(k)
    if k == 1:
        return positions
    first = positions * k
    # per axis with scalar bounds: no host -> device copy of the shape (the batch stage counts transfers)
    last = torch.stack([(first[..., a] + (k - 1)).clamp(max=shape[a] - 1) for a in (0, 1)], dim=-1)
    return (first + last) / 2
