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

How: per side the overlaps are a banded matrix, out = Ry @ frame @ Rx^T. For the samplings met in
practice r = q / p with a short period (0.1 A: 12 / 5, 0.144 A: 5 / 3, 0.2 A: 6 / 5): every p working
pixels span exactly q detector pixels with the same overlaps, so a side is one batched (p, q) block
product on a view of its whole periods plus a small dense tail for the last working pixels (reflection
folded into its weights); both are built once per (side, r, device) and cached. That moves each count
about once per side, like a copy: a K2 frame at r = 2.4 takes 9 ms, 48 ms by the per-overlap gathers
of before (one gather and multiply-add per overlap, ``rebin_by_gathers``; a factor with no short period,
such as a calibrated 0.1037 A, still goes that way; README, "Detector pixels no integer bin serves").
Float32 products of float32 weights: within 1e-6 relative of the float64 definition
(tests/unit/test_resample_area_reference.py); cumulative sums sampled at the edges would need float64
over 3838 rows and cost more. On CUDA the products rely on torch's default full float32 matmul: with
``torch.backends.cuda.matmul.allow_tf32`` set, counts would be rounded to ~1e-3.

Memory: a K2 frame at r = 1.2 is 40 MB down and 57 MB back, over glibc's 32 MiB mmap threshold, so
each fresh buffer came as new pages from the OS (~17 ms of first-touch faults for the 40 MB, as much
as the arithmetic). On the CPU the intermediates are per-thread scratch buffers (``_scratch``) and a
result goes into the memory of an earlier one of its size only once nothing refers to it any more
(``result_buffer``: no tensor, view, row, numpy array or storage object of it is left), as an allocator
reuses freed memory; a result the caller keeps (``BinnedCache`` keeps rows across batches, the
publisher and recorder the frames back) is never written. Same operations, same bits.

Back: the same bicubic / bilinear interpolation as the integer path, with the float scale r: ATen then
samples working coordinate (i + 1/2) / r - 1/2 for detector pixel i, i.e. its centre (i + 1/2) d.
"""

from __future__ import annotations

import math
import sys
import threading
from dataclasses import dataclass
from functools import lru_cache

import torch

SNAP = 1e-9
"""Pixel edges within this of an integer are taken as on it: r = 0.24 / 0.1 is 2.3999999999999995 in
floating point, and 50 r must end exactly at detector pixel 120, not 3e-14 of a pixel before it."""

PERIOD_MAX = 24
"""Longest period (working pixels) served by the block product: every detector pixel 0.01 A apart below
0.24 A repeats within 22 (0.22 A: r = 12 / 11); a (p, q) block costs 2 p multiply-adds per detector
pixel, so much longer ones would cost more than the gathers they replace."""


def rebinned_side(n: int, r: float) -> int:
    """Working pixels on a side of ``n`` detector pixels: enough to cover it (the last one may be partial)."""
    return max(1, math.ceil(n / r - SNAP))


@lru_cache(maxsize=64)
def _overlaps64(n: int, r: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per axis: (T, m) source detector pixels and (T, m) float64 area overlaps of the m working pixels.

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
    return src[keep], area[keep]


def _overlaps(n: int, r: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``_overlaps64`` with float32 areas (the gather path's weights)."""
    src, area = _overlaps64(n, r)
    return src, area.to(torch.float32)


def _dense(n: int, r: float, first: int, last: int, lo: int, hi: int) -> torch.Tensor:
    """(last - first, hi - lo) float32 weights of working pixels [first, last) on detector pixels
    [lo, hi): the band of ``_overlaps64`` as a matrix, reflected pixels added onto their sources."""
    src, area = _overlaps64(n, r)
    src, area = src[:, first:last], area[:, first:last]
    out = torch.zeros(last - first, hi - lo, dtype=torch.float64)
    rows = torch.arange(last - first).expand_as(src)
    out.index_put_((rows.reshape(-1), (src - lo).reshape(-1)), area.reshape(-1), accumulate=True)
    return out.to(torch.float32)


def period(r: float, n: int, most: int = PERIOD_MAX) -> tuple[int, int] | None:
    """(p, q): the fewest working pixels p <= ``most`` spanning a whole number q of detector pixels
    (r = q / p), so that the overlaps repeat every p working pixels along a side of ``n``; None if no
    such p within floating-point error over the whole side (a calibrated 0.1037 A: the gather path)."""
    for p in range(1, most + 1):
        q = round(p * r)
        if q > 0 and abs(p * r - q) * (n / q + 1) < 1e-10:
            return p, q
    return None


@dataclass(frozen=True)
class AxisPlan:
    """One side's resampling as whole periods and a tail, precomputed per (side, r, device).

    The first ``periods`` x p working pixels are ``block`` (p, q) applied to each run of q detector
    pixels (one batched matrix product on a view: no gathers); the last ``m - periods p`` ones are
    ``tail`` applied to detector pixels [lo, n), where the reflection past the frame is folded in.
    """

    p: int
    q: int
    periods: int
    block: torch.Tensor
    lo: int
    tail: torch.Tensor


@lru_cache(maxsize=64)
def axis_plan(n: int, r: float, device: str = "cpu") -> AxisPlan | None:
    """The periodic plan of a side of ``n`` detector pixels (None: r has no short period)."""
    pq = period(r, n)
    if pq is None:
        return None
    p, q = pq
    m, k = rebinned_side(n, r), n // q
    src = _overlaps64(n, r)[0][:, k * p :]
    lo = int(src.min()) if src.numel() else n
    dev = torch.device(device)
    block = _dense(q, r, 0, p, 0, q) if k else torch.zeros(p, q)
    return AxisPlan(p, q, k, block.to(dev), lo, _dense(n, r, k * p, m, lo, n).to(dev))


_SCRATCH = threading.local()


def _scratch(shape: tuple[int, ...], device: torch.device, use: str = "rows") -> torch.Tensor:
    """A float32 buffer for an intermediate that never leaves this module (``use``: the row pass's
    result, or the per-pixel counts on the way back), kept per thread on the CPU and reused while the
    shape holds: a fresh 47 MB one (a K2 frame at r = 1.2) costs ~16 ms of first-touch page faults, as
    much as the product written into it. One per thread and use, so concurrent callers never share
    one; the CUDA caching allocator already reuses device memory."""
    if device.type != "cpu":
        return torch.empty(shape, dtype=torch.float32, device=device)
    buf = getattr(_SCRATCH, use, None)
    if buf is None or tuple(buf.shape) != shape:
        buf = torch.empty(shape, dtype=torch.float32)
        setattr(_SCRATCH, use, buf)
    return buf


RESULTS_KEPT = 6
"""Result buffers of one size a thread keeps for reuse (``result_buffer``): the live lane with N evidence
frames holds about N + 1 results (``BinnedCache`` keeps each frame's row), so N <= 4 finds a released
one each call."""

SIZES_KEPT = 2
"""Result sizes a thread keeps buffers of: a frame shape's way down and way back; a third size drops
the least recently used one's buffers (those still held are freed as usual when their holder lets go)."""


def _refs(kept: list[torch.UntypedStorage], i: int) -> int:
    """Python references to ``kept[i]`` (binds no name to it: each would count)."""
    return sys.getrefcount(kept[i])


_BASE_REFS = _refs([torch.empty(0).untyped_storage()], 0)
"""``_refs`` of a kept storage that nobody else holds (calibrated here, not assumed per Python)."""


def _released(kept: list[torch.UntypedStorage], i: int, nbytes: int) -> bool:
    """Whether nothing outside ``kept`` refers to its i-th storage: no tensor (a result, a view, a row
    of ``unbind``, the tensor behind a ``.numpy()`` array or a DLPack capsule all hold the storage) and
    no Python storage object (``untyped_storage()`` hands out the kept one). The C++ count is read again
    last: a storage is rebuilt into a tensor only by one who holds it, which the second read would see."""
    if kept[i].nbytes() != nbytes:
        return False
    use = torch._C._storage_Use_Count  # private, as torch's own cudagraph trees use it; test-pinned
    return use(kept[i]._cdata) == 1 and _refs(kept, i) <= _BASE_REFS and use(kept[i]._cdata) == 1


def result_buffer(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """A float32 tensor for a result (``rebin_area``'s, ``unbin_area``'s): on the CPU the memory of an
    earlier result of this size and thread that every holder has released, else fresh. A fresh 40 MB
    one (a K2 frame at r = 1.2) costs ~17 ms of first-touch page faults (glibc maps every allocation
    over 32 MiB anew), half the call. Reused only when unreferenced, as an allocator reuses freed
    memory: a result the caller, a cache or another thread still holds (or any view of it) is never
    written. Per thread: no locks; another thread can only release a buffer (nobody else can take a
    new reference to one nobody holds). On CUDA torch's caching allocator already does this."""
    if device.type != "cpu":
        return torch.empty(shape, dtype=torch.float32, device=device)
    sizes: dict[int, list[torch.UntypedStorage]] | None = getattr(_SCRATCH, "results", None)
    if sizes is None:
        sizes = _SCRATCH.results = {}
    nbytes = 4 * math.prod(shape)
    kept = sizes.pop(nbytes, [])
    sizes[nbytes] = kept  # most recently used size last
    for i in range(len(kept)):
        if _released(kept, i, nbytes):
            kept.append(kept.pop(i))  # most recently used last
            strides = [math.prod(shape[d + 1 :]) for d in range(len(shape))]
            return torch.empty(0, dtype=torch.float32).set_(kept[-1], 0, shape, strides)
    out = torch.empty(shape, dtype=torch.float32)
    kept.append(out.untyped_storage())
    if len(kept) > RESULTS_KEPT:
        del kept[0]
    while len(sizes) > SIZES_KEPT:
        del sizes[next(iter(sizes))]
    return out


def _rows(x: torch.Tensor, plan: AxisPlan, out: torch.Tensor | None = None) -> torch.Tensor:
    """(B, n, W) -> (B, m, W) by ``plan``: each run of q rows to p rows (bmm over the runs)."""
    b, _, w = x.shape
    kp, kq = plan.periods * plan.p, plan.periods * plan.q
    if out is None:
        out = torch.empty(b, kp + plan.tail.shape[0], w, dtype=x.dtype, device=x.device)
    if plan.periods:
        block = plan.block.expand(plan.periods, plan.p, plan.q)
        for i in range(b):
            src = x[i, :kq].view(plan.periods, plan.q, w)
            torch.bmm(block, src, out=out[i, :kp].view(plan.periods, plan.p, w))
    out[:, kp:] = torch.matmul(plan.tail, x[:, plan.lo :])
    return out


def _cols(x: torch.Tensor, plan: AxisPlan, out: torch.Tensor | None = None) -> torch.Tensor:
    """(B, R, n) -> (B, R, m) by ``plan``: each run of q columns to p columns, per row (bmm)."""
    b, rows, _ = x.shape
    kp, kq = plan.periods * plan.p, plan.periods * plan.q
    if out is None:
        out = torch.empty(b, rows, kp + plan.tail.shape[0], dtype=x.dtype, device=x.device)
    if plan.periods:
        block = plan.block.t().expand(rows, plan.q, plan.p)
        for i in range(b):
            src = x[i, :, :kq].unflatten(-1, (plan.periods, plan.q))
            torch.bmm(src, block, out=out[i, :, :kp].unflatten(-1, (plan.periods, plan.p)))
    out[..., kp:] = torch.matmul(x[..., plan.lo :], plan.tail.t())
    return out


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
    dev = str(x.device)
    # rows first: the column pass then runs on r times fewer rows (52 vs 580 ms a K2 frame at r = 2.4
    # by gathers)
    rows, cols = axis_plan(h, r, dev), axis_plan(w, r, dev)
    if rows is not None and cols is not None:  # the intermediate never leaves: a reused buffer
        m = rebinned_side(h, r)
        y = _rows(x, rows, _scratch((x.shape[0], m, w), x.device))
        return _cols(y, cols, result_buffer((x.shape[0], m, rebinned_side(w, r)), x.device))
    y = _rows(x, rows) if rows is not None else _axis(x, h, r, -2)
    return _cols(y, cols) if cols is not None else _axis(y, w, r, -1)


def rebin_by_gathers(frames: torch.Tensor, r: float) -> torch.Tensor:
    """``rebin_area`` by per-overlap gathers on both sides, as every factor was served before session 32
    (the path a factor with no short period still takes); ``benchmarks/bench_resample.py`` times it."""
    x = frames.to(torch.float32)
    h, w = x.shape[-2:]
    return _axis(_axis(x, h, r, -2), w, r, -1)


def unbin_area(binned: torch.Tensor, r: float, shape: tuple[int, int], mode: str) -> torch.Tensor:
    """(B, h, w) counts per working pixel -> (B, H, W) counts per detector pixel, interpolated at the
    detector pixel centres: ATen's align_corners=False source coordinate (i + 1/2) / r - 1/2 with the
    scale r given (not derived from the sizes, which would be H / h, off by the partial last pixel)."""
    if mode not in ("bicubic", "bilinear"):
        raise ValueError(f"upsampling mode must be bicubic or bilinear, got {mode!r}")
    op = torch.ops.aten.upsample_bilinear2d if mode == "bilinear" else torch.ops.aten.upsample_bicubic2d
    size, scale = [shape[0], shape[1]], float(r)
    x = binned.to(torch.float32).unsqueeze(1)
    if x.requires_grad and torch.is_grad_enabled():  # out= records no gradient
        return op.default(x / float(r * r), size, False, scale, scale)[:, 0]
    per_px = torch.div(x, float(r * r), out=_scratch(tuple(x.shape), x.device, "back"))
    out = result_buffer((per_px.shape[0], 1, *size), per_px.device)  # a K2 frame: 57 MB, reused once released
    return op.out(per_px, size, False, scale, scale, out=out)[:, 0]


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
