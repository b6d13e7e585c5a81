"""The faster binning paths (audit 25 perf D3, D4, D5) give exactly the old formulas' numbers.

``bin_counts`` sums whole blocks straight from the frame and pads only a slab at the far edge (uint16
through numpy's cast on the CPU), ``unbin`` asks ATen for the (H, W) samples at scale k instead of
interpolating the padded grid and cropping, ``unbin_nearest`` writes the blocks into a contiguous frame
instead of two ``repeat_interleave`` and a crop. The references below are the old code, verbatim in
substance; every comparison is ``torch.equal`` (bit for bit, dtype and shape too).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from sbd_stream.compute.binning import bin_counts, unbin, unbin_nearest


def ref_bin_counts(frames: torch.Tensor, k: int) -> torch.Tensor:
    """The old ``bin_counts``: torch's cast, the whole frame reflect-padded, k strided adds per axis."""
    x = frames.to(torch.float32)
    if k == 1:
        return x
    h, w = x.shape[-2:]
    ph, pw = -h % k, -w % k
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x.unsqueeze(1), (0, pw, 0, ph), mode=mode).squeeze(1)
    cols = x[..., 0::k] + x[..., 1::k]
    for j in range(2, k):
        cols += x[..., j::k]
    rows = cols[:, 0::k] + cols[:, 1::k]
    for j in range(2, k):
        rows += cols[:, j::k]
    return rows


def ref_block_sums(frames: torch.Tensor, k: int) -> torch.Tensor:
    """Pad, then a plain sum over each k x k block (exact for integer counts, any summation order)."""
    x = frames.to(torch.float64)
    h, w = x.shape[-2:]
    ph, pw = -h % k, -w % k
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x.unsqueeze(1), (0, pw, 0, ph), mode=mode).squeeze(1)
    b, hp, wp = x.shape
    return x.reshape(b, hp // k, k, wp // k, k).sum(dim=(2, 4)).to(torch.float32)


def ref_unbin(binned: torch.Tensor, k: int, shape: tuple[int, int], mode: str) -> torch.Tensor:
    """The old ``unbin``: interpolate the whole padded grid at scale k, then crop (a strided view)."""
    if k == 1:
        return binned[..., : shape[0], : shape[1]]
    per_px = binned.to(torch.float32).unsqueeze(1) / float(k * k)
    up = F.interpolate(per_px, scale_factor=k, mode=mode, align_corners=False)
    return up[:, 0, : shape[0], : shape[1]]


def ref_unbin_nearest(binned: torch.Tensor, k: int, shape: tuple[int, int]) -> torch.Tensor:
    """The old ``unbin_nearest``: repeat_interleave twice, then crop."""
    if k == 1:
        return binned[..., : shape[0], : shape[1]]
    up = binned.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)
    return up[..., : shape[0], : shape[1]]


DTYPES = ("uint8", "uint16", "int32", "float32")


def _frames(rng: np.random.Generator, b: int, h: int, w: int, dtype: str) -> torch.Tensor:
    if dtype == "float32":  # not counts: non-integer values, where the summation order shows
        a = (rng.standard_normal((b, h, w)) * 10.0 ** rng.uniform(-3, 3)).astype(np.float32)
    else:
        top = {"uint8": 255, "uint16": 65535, "int32": 1 << 20}[dtype]
        a = rng.integers(0, top, size=(b, h, w), endpoint=True).astype(dtype)
        if dtype == "int32":
            a[rng.random(a.shape) < 0.1] *= -1
    return torch.from_numpy(a)


def _cases(n: int, seed: int) -> list[tuple[int, int, int, int, str]]:
    """(batch, H, W, k, dtype): sides 1..69 (every remainder of every k), and K2-like remainders of 2."""
    rng = np.random.default_rng(seed)
    out = [(1 + int(rng.integers(3)), int(rng.integers(1, 70)), int(rng.integers(1, 70)),
            int(rng.integers(1, 6)), DTYPES[int(rng.integers(4))]) for _ in range(n)]  # fmt: skip
    out += [(1, 4 * m + 2, 4 * m2 + 2, 4, d) for m, m2 in ((2, 3), (9, 16), (25, 17)) for d in DTYPES]
    out += [
        (2, h, w, k, d) for h, w in ((8, 8), (9, 9), (10, 7), (2, 69)) for k in (2, 3, 4, 5) for d in DTYPES
    ]
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_bin_counts_is_the_old_padded_strided_sum_bit_for_bit(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    for b, h, w, k, dtype in _cases(150, seed):
        x = _frames(rng, b, h, w, dtype)
        got = bin_counts(x, k)
        want = ref_bin_counts(x, k)
        assert got.dtype == torch.float32 and got.shape == want.shape, (b, h, w, k, dtype)
        assert torch.equal(got, want), (b, h, w, k, dtype)
        if dtype != "float32" and k > 1:
            assert torch.equal(got, ref_block_sums(x, k)), (b, h, w, k, dtype)


def test_bin_counts_of_a_strided_uint16_view_and_of_a_k2_frame() -> None:
    rng = np.random.default_rng(5)
    base = torch.from_numpy(rng.poisson(0.45, size=(2, 90, 131)).astype(np.uint16))
    view = base[:, 3:, ::2]  # not contiguous: numpy's cast takes it as it is
    assert torch.equal(bin_counts(view, 4), ref_bin_counts(view, 4))
    k2 = torch.from_numpy(rng.poisson(0.45, size=(1, 3838, 3710)).astype(np.uint16))
    assert torch.equal(bin_counts(k2, 4), ref_bin_counts(k2, 4))


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_unbin_is_the_old_interpolate_then_crop_and_contiguous(mode: str) -> None:
    rng = np.random.default_rng(7)
    larger = [(1 + int(rng.integers(2)), int(rng.integers(60, 300)), int(rng.integers(60, 300)),
               int(rng.integers(2, 6)), "") for _ in range(60)]  # fmt: skip
    for b, h, w, k, _ in [*_cases(120, 3), *larger]:  # H + W <= 128 and above (see SMALL_OUTPUT)
        binned = torch.from_numpy(rng.random((b, -(-h // k), -(-w // k)), dtype=np.float32) * 9)
        got, want = unbin(binned, k, (h, w), mode), ref_unbin(binned, k, (h, w), mode)
        assert got.shape == want.shape == (b, h, w), (b, h, w, k)
        assert torch.equal(got, want), (b, h, w, k, mode)
        if k > 1:  # the caller flattens it: no copy (the old crop was a strided view)
            assert got.is_contiguous(), (b, h, w, k)
    binned = torch.from_numpy(rng.random((1, 960, 928), dtype=np.float32) * 9)
    got = unbin(binned, 4, (3838, 3710), mode)
    assert got.is_contiguous() and torch.equal(got, ref_unbin(binned, 4, (3838, 3710), mode))


def test_unbin_nearest_is_the_old_repeat_then_crop_and_contiguous() -> None:
    rng = np.random.default_rng(11)
    for b, h, w, k, dtype in _cases(150, 4):
        binned = bin_counts(_frames(rng, b, h, w, dtype), k)
        got, want = unbin_nearest(binned, k, (h, w)), ref_unbin_nearest(binned, k, (h, w))
        assert got.shape == want.shape == (b, h, w), (b, h, w, k)
        assert torch.equal(got, want), (b, h, w, k)
        if k > 1:
            assert got.is_contiguous(), (b, h, w, k)
    llr = torch.from_numpy(rng.standard_normal((2, 960, 928)).astype(np.float32))
    got = unbin_nearest(llr, 4, (3838, 3710))
    assert got.is_contiguous() and torch.equal(got, ref_unbin_nearest(llr, 4, (3838, 3710)))
