"""The integer path back (``binning.unbin``, a K2 frame binned 4 x 4 at 0.060 A) reuses a released
result's memory as the fractional path does (``resample.result_buffer``): a fresh 57 MB result per frame
cost ~24 ms of first-touch page faults. Counted page faults, not time; results equal the fresh ones bit
for bit while earlier ones are held."""

from __future__ import annotations

import resource

import numpy as np
import pytest
import torch

from sbd_stream.compute.binning import unbin

K2 = (3838, 3710)
BINNED = (1, 960, 928)  # a K2 frame binned 4 x 4, sides rounded up


def fresh(binned: torch.Tensor, k: int, shape: tuple[int, int], mode: str) -> torch.Tensor:
    """ATen's functional op into fresh memory (the code before reuse)."""
    op = torch.ops.aten.upsample_bilinear2d if mode == "bilinear" else torch.ops.aten.upsample_bicubic2d
    return op.default(binned.unsqueeze(1) / float(k * k), list(shape), False, float(k), float(k))[:, 0]


def binned_frame(seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).poisson(7.2, BINNED).astype(np.float32))


def test_a_released_k2_frame_back_is_reused_without_page_faults() -> None:
    b = binned_frame(0)
    expected = fresh(b, 4, K2, "bilinear")
    unbin(b, 4, K2, "bilinear")  # the buffer of this shape
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        got = unbin(b, 4, K2, "bilinear")
        assert torch.equal(got, expected)
        del got
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < expected.nbytes // 4096 // 4  # was 3 x ~13,900: a fresh 57 MB result each call


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_held_results_are_never_written(mode: str) -> None:
    frames = [binned_frame(s) for s in range(4)]
    held = [unbin(f, 4, K2, mode) for f in frames]  # the caller keeps every result
    rows = [h[0, :2].numpy() for h in held]  # and numpy views of them
    for f, h, r in zip(frames, held, rows, strict=True):
        want = fresh(f, 4, K2, mode)
        assert torch.equal(h, want) and np.array_equal(r, want[0, :2].numpy())
