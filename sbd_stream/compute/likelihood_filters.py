"""CPU Laplacian-of-Gaussian as banded matrix products: C-speed separable filtering without conv2d.

Single-channel ``conv2d`` with a long 1-D kernel is slow on CPU (mkldnn is tuned for many channels)
and a Python loop of shifted adds makes one pass over the frame per tap. A 1-D correlation with a
kernel of length L is, on a block of ``b`` output rows, the product of a fixed (b, b + L - 1) banded
matrix with the b + L - 1 input rows it reads: the whole pass is one batched GEMM over overlapping
row blocks (``unfold``), which BLAS runs at a large fraction of peak. It multiplies ~(b + L - 1) / L
more than a direct correlation but runs many times faster; b = 32 is the measured sweet spot.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

BLOCK = 32
_M = TypeVar("_M", bound=Callable[..., Any])


def banded(kernels: list[np.ndarray], block: int = BLOCK) -> torch.Tensor:
    """(C * block, block + L - 1) float32: row i of kernel c's slab is that kernel shifted by i."""
    n = block + len(kernels[0]) - 1
    out = np.zeros((len(kernels), block, n), np.float32)
    for c, k in enumerate(kernels):
        for i in range(block):
            out[c, i, i : i + len(k)] = k
    return torch.from_numpy(out.reshape(len(kernels) * block, n))


def _row_blocks(x: torch.Tensor, rows: int, n: int, block: int) -> torch.Tensor:
    """(N, rows + n - block, W) -> (N, nb, n, W) overlapping input blocks, zero rows added at the end."""
    nb = -(-rows // block)
    extra = nb * block + n - block - x.shape[1]
    if extra:
        x = F.pad(x, (0, 0, 0, extra))
    return x.unfold(1, n, block).transpose(2, 3)


def log_banded(
    x: torch.Tensor, g_band: torch.Tensor, g2_band: torch.Tensor, radius: int, block: int = BLOCK
) -> torch.Tensor:
    """'valid' Laplacian of Gaussian of a padded (B, H + 2r, W + 2r) frame -> (B, H, W).

    ``g_band`` / ``g2_band`` come from ``banded([g])`` / ``banded([g2])``: d2/dy2 (g2 along y, g along
    x) plus d2/dx2 (g along y, g2 along x), as scipy.ndimage.gaussian_laplace.
    """
    b, hp, wp = x.shape
    h, w = hp - 2 * radius, wp - 2 * radius
    n = block + 2 * radius
    both = torch.cat([g_band, g2_band], 0)  # one GEMM gives the y-smoothed and the y-differentiated rows
    y = torch.matmul(both, _row_blocks(x, h, n, block))  # (B, nb, 2 block, W + 2r)
    nb = y.shape[1]
    y = y.view(b, nb, 2, block, wp).permute(0, 2, 1, 3, 4).reshape(b, 2, nb * block, wp)[:, :, :h]
    yt = y.transpose(2, 3)  # (B, 2, W + 2r, H): filter along x as rows of the transpose
    smooth = _row_blocks(yt[:, 0], w, n, block)
    dyy = _row_blocks(yt[:, 1], w, n, block)
    out = torch.matmul(g2_band, smooth)
    out += torch.matmul(g_band, dyy)  # (B, nbx, block, H)
    return out.reshape(b, -1, h)[:, :w].transpose(1, 2)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the enclosed torch CPU ops on ``n`` intra-op threads, then restore the process setting.

    The likelihood ops are short and memory-bound: a second thread gains little, and on a busy machine
    (the denoiser's pool, I/O threads, other jobs) each op's barrier waits on a descheduled thread while
    the waiting one spins. Measured on the shared 2-core box: llr_and_paint 15 ms on one thread, ~190 ms
    on two. ``torch.set_num_threads`` is process-wide: callers running torch concurrently in another
    thread see the change for the duration (the pipeline runs denoise and likelihood in one thread).
    """
    old = torch.get_num_threads()
    if n is None or n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def pinned(method: _M) -> _M:
    """Run a method under its object's ``cpu_threads`` (see ``torch_threads``)."""

    @functools.wraps(method)
    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        with torch_threads(self.cpu_threads):
            return method(self, *args, **kwargs)

    return run  # type: ignore[return-value]  # the wrapper takes and returns what the method does


def blocks(x: torch.Tensor, s: int, nh: int, nw: int) -> torch.Tensor:
    """(B, H, W) -> (B, nh * nw, s * s): the frame's whole s x s blocks, one per row."""
    b = x.shape[0]
    x = x[:, : nh * s, : nw * s].reshape(b, nh, s, nw, s).permute(0, 1, 3, 2, 4)
    return x.reshape(b, nh * nw, s * s)


def sliding_max(x: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    """out[i] = max(x[i : i + length]) along ``dim`` by doubling spans: log2(length) elementwise maxima.

    A square maximum filter is two of these (rows, then columns); torch's stride-1 max_pool2d costs
    (2 m + 1)^2 per pixel on CPU, this costs ~2 log2(2 m + 1).
    """
    span = 1
    while 2 * span <= length:
        n = x.shape[dim]
        x = torch.maximum(x.narrow(dim, 0, n - span), x.narrow(dim, span, n - span))
        span *= 2
    rest = length - span
    if rest:
        n = x.shape[dim]
        x = torch.maximum(x.narrow(dim, 0, n - rest), x.narrow(dim, rest, n - rest))
    return x


def square_max(x: torch.Tensor, m: int, fill: float | int) -> torch.Tensor:
    """Maximum over the (2 m + 1)^2 square around each pixel of (B, H, W); outside pixels are ``fill``."""
    x = F.pad(x, (m, m, m, m), value=fill)
    return sliding_max(sliding_max(x, 2 * m + 1, 2), 2 * m + 1, 1)


def first_of_ties(candidates: torch.Tensor, m: int) -> torch.Tensor:
    """(N, 3) [frame, row, col] of the (B, H, W) candidate maxima that have no earlier candidate (row-major)
    within their (2 m + 1)^2 square.

    Why: candidates are pixels equal to the maximum of their square, so two within each other's square
    are exact ties (a plateau, e.g. a flat or striped frame). Without this every pixel of a plateau
    counted (8,192 "columns" on a 256^2 frame of bright lines every 8 px); keeping the first makes the
    kept ones at least m + 1 pixels apart, so a frame has at most one column per m x m square. Frames
    without ties keep every candidate. Only the candidates' earlier half-squares are read (N x (2 m^2 +
    2 m) gathers on a zero-padded copy of the mask), not the frame.
    """
    c = candidates.nonzero()
    if m < 1:
        return c
    b, h, w = candidates.shape
    hp, wp = h + m, w + 2 * m  # m empty rows on top, m empty columns left and right: no bounds checks
    padded = F.pad(candidates.view(b, 1, h, w).to(torch.uint8), (m, m, m, 0))
    dy, dx = torch.meshgrid(
        torch.arange(-m, 1, device=c.device), torch.arange(-m, m + 1, device=c.device), indexing="ij"
    )
    earlier = (dy < 0) | (dx < 0)
    offsets = dy[earlier] * wp + dx[earlier]
    base = (c[:, 0] * hp + c[:, 1] + m) * wp + c[:, 2] + m
    tied = padded.view(-1)[base[:, None] + offsets].any(1).bool()
    return c[~tied]
