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

    return run  # type: ignore[return-value]
