"""Area-weighted resampling to a working pixel that is no integer multiple of the detector's.

Why: microscopes step their magnification, and simulations pick round samplings (0.1, 0.2 A), so a
detector pixel d often divides the engine's working pixel w by no integer within tolerance (0.24 / 0.1 =
2.4). Refusing such data served nobody; resampling it to w keeps the column sizes the engine was trained
on. Each detector pixel's counts are split over the working pixels its area overlaps (per axis a banded
overlap matrix: working pixel j covers detector coordinates [j r, (j + 1) r), r = w / d), so the counts
per working pixel sum to the frame's, the dose per A^2 is kept, and a constant image stays constant.

Not exactly Poisson: a detector pixel split between two working pixels adds a *fraction* of its counts
to each, so a working pixel's variance is sum(a_i^2 lambda) over overlaps a_i <= 1, under its mean
sum(a_i lambda), and neighbouring working pixels are slightly correlated. On vacuum at 0.45 counts per
detector pixel variance / mean is 0.54 at r = 1.2, 0.68 at 5/3 and 0.75 at 2.4 (1 for the integer bin;
``benchmarks/bench_resample.py``). The network, trained on Poisson counts, sees a frame less noisy than
its dose says; the quality test (tests/e2e/test_fractional_sampling_quality.py) bounds what that costs.
(A binomial split of each pixel's counts would be exactly Poisson, but random: not chosen.)

The last working pixel of a side that is no multiple of r reaches past the frame; as ``bin_counts``
does, the frame is continued by reflection there (pixel H + m is pixel H - 2 - m), not rescaled by the
covered area: every working pixel then holds r^2 detector pixels' worth of counts, with the same
statistics as its neighbours (rescaling a partial pixel by area / covered would scale its counts, and
with them its variance by that factor squared: a noisier edge the engine never saw), and an integer r
gives exactly ``bin_counts``. The reflected band only influences what is cropped away on the way back.

Back: the same bicubic / bilinear interpolation as the integer path, with the float scale r: ATen then
samples working coordinate (i + 1/2) / r - 1/2 for detector pixel i, i.e. its centre (i + 1/2) d.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

SNAP = 1e-9
"""Pixel edges within this of an integer are taken as on it: r = 0.24 / 0.1 is 2.3999999999999995 in
floating point, and 50 r must end exactly at detector pixel 120, not 3e-14 of a pixel before it."""


def rebinned_side(n: int, r: float) -> int:
    """Working pixels on a side of ``n`` detector pixels: enough to cover it (the last one may be partial)."""
    return max(1, math.ceil(n / r - SNAP))


@lru_cache(maxsize=64)
def _overlaps(n: int, r: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per axis: (T, m) source detector pixels and (T, m) area overlaps of the m working pixels.

    Row t is the t-th detector pixel a working pixel touches: a span of r touches at most ceil(r) + 1;
    rows that are all zero are dropped. Pixels past the frame's end reflect into it (clamped for a frame
    shorter than its reflection needs).
    """
    m = rebinned_side(n, r)
    edges = torch.arange(m + 1, dtype=torch.float64) * r
    near = edges.round()
    edges = torch.where((edges - near).abs() < SNAP, near, edges)
    lo, hi = edges[:-1], edges[1:]
    first = lo.floor()
    steps = torch.arange(math.ceil(r) + 1, dtype=torch.float64)[:, None]
    pix = first[None, :] + steps  # (T, m) pixel index on the reflected, unbounded grid
    area = (torch.minimum(pix + 1, hi) - torch.maximum(pix, lo)).clamp(min=0)
    src = torch.where(pix >= n, 2 * (n - 1) - pix, pix).clamp(0, n - 1).to(torch.int64)
    keep = area.sum(dim=1) > 0
    return src[keep], area[keep].to(torch.float32)


def _axis(x: torch.Tensor, n: int, r: float, dim: int) -> torch.Tensor:
    """Rebin one axis (``dim`` -1 or -2) of x: T gathers and fused multiply-adds over the band.

    Rows are gathered with ``index_select`` (whole-row copies); columns by advanced indexing, ~3x faster
    than ``index_select`` on the last axis (57 vs 170 ms a K2 frame at r = 2.4 on 2 loaded cores).
    """
    src, area = _overlaps(n, r)
    src, area = src.to(x.device), area.to(x.device)
    if dim == -1:
        out = x[..., src[0]] * area[0]
        for t in range(1, src.shape[0]):
            out.addcmul_(x[..., src[t]], area[t])
        return out
    out = x.index_select(-2, src[0]) * area[0].view(-1, 1)
    for t in range(1, src.shape[0]):
        out.addcmul_(x.index_select(-2, src[t]), area[t].view(-1, 1))
    return out


def rebin_area(frames: torch.Tensor, r: float) -> torch.Tensor:
    """(B, H, W) counts -> (B, ceil(H / r), ceil(W / r)) float32 area-weighted sums (see above)."""
    if frames.ndim != 3:
        raise ValueError(f"expected (B, H, W) frames, got shape {tuple(frames.shape)}")
    if not r > 0:
        raise ValueError(f"resampling factor must be > 0, got {r}")
    x = frames.to(torch.float32)
    h, w = x.shape[-2:]
    # rows first: the column gathers, the slower kind, then run on r times fewer rows (52 vs 580 ms a K2
    # frame at r = 2.4)
    return _axis(_axis(x, h, r, -2), w, r, -1)


def unbin_area(binned: torch.Tensor, r: float, shape: tuple[int, int], mode: str) -> torch.Tensor:
    """(B, h, w) counts per working pixel -> (B, H, W) counts per detector pixel, interpolated at the
    detector pixel centres: ATen's align_corners=False source coordinate (i + 1/2) / r - 1/2 with the
    scale r given (not derived from the sizes, which would be H / h, off by the partial last pixel)."""
    if mode not in ("bicubic", "bilinear"):
        raise ValueError(f"upsampling mode must be bicubic or bilinear, got {mode!r}")
    per_px = binned.to(torch.float32).unsqueeze(1) / float(r * r)
    op = torch.ops.aten.upsample_bilinear2d if mode == "bilinear" else torch.ops.aten.upsample_bicubic2d
    return op.default(per_px, [shape[0], shape[1]], False, float(r), float(r))[:, 0]


def _nearest_index(n: int, r: float, m: int, device: torch.device) -> torch.Tensor:
    """Per detector pixel, the working pixel holding its centre."""
    i = torch.arange(n, dtype=torch.float64)
    return ((i + 0.5) / r).floor().clamp(max=m - 1).to(torch.int64).to(device)


def unbin_area_nearest(binned: torch.Tensor, r: float, shape: tuple[int, int]) -> torch.Tensor:
    """Working-pixel values spread to the detector pixels whose centres they hold (maps)."""
    rows = _nearest_index(shape[0], r, binned.shape[-2], binned.device)
    cols = _nearest_index(shape[1], r, binned.shape[-1], binned.device)
    return binned.index_select(-2, rows).index_select(-1, cols)


def area_to_detector(positions: torch.Tensor, r: float, shape: tuple[int, int]) -> torch.Tensor:
    """Working-pixel [row, col] positions -> detector pixel coordinates: the centre of the part of the
    working pixel's span [p r, (p + 1) r) inside the frame, as ``to_detector_coords`` does for k."""
    lo = positions * r
    hi = torch.stack([(lo[..., a] + r).clamp(max=float(shape[a])) for a in (0, 1)], dim=-1)
    return (lo + hi) / 2 - 0.5
