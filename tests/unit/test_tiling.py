"""Overlap-tile inference: exactness against whole-frame inference, seams, layout, edge cases."""

from __future__ import annotations

import pytest
import torch

from benchmarks.paper_tiling import paper_patch_average, paper_seam_lines
from sbd_stream.compute.model import UNet, support_extent
from sbd_stream.compute.quality import seam_error, seam_step_ratio
from sbd_stream.compute.tiling import (
    BlendWindow,
    _weight_sum,
    fuse_tiles,
    plan_tiles,
    split_tiles,
    whole_frame_reference,
)


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    torch.manual_seed(7)
    model = UNet(scales=2, channels=8)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def run_tiled(x: torch.Tensor, plan, net: torch.nn.Module, chunk: int = 5) -> torch.Tensor:
    tiles = split_tiles(x, plan)
    with torch.no_grad():
        out = torch.cat([net(tiles[i : i + chunk]) for i in range(0, len(tiles), chunk)])
    return fuse_tiles(out, plan, x.shape[0])


@pytest.mark.parametrize("shape", [(101, 77), (200, 333), (64, 64), (5, 9), (1, 1), (257, 129)])
def test_tiled_equals_whole_frame_with_margin_at_least_reach(net, shape) -> None:
    reach = max(support_extent(net))
    plan = plan_tiles(*shape, tile=128, margin=reach, overlap=12, multiple=4)
    x = torch.poisson(torch.full((3, *shape), 0.45))
    out = run_tiled(x, plan, net)
    with torch.no_grad():
        ref = whole_frame_reference(x, plan, net)
    assert out.shape == (3, *shape)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_margin_below_reach_is_not_exact(net) -> None:
    # guards the exactness test: it must be able to fail
    plan = plan_tiles(200, 200, tile=64, margin=2, overlap=4, multiple=4)
    x = torch.poisson(torch.full((1, 200, 200), 0.45))
    with torch.no_grad():
        ref = whole_frame_reference(x, plan, net)
    assert (run_tiled(x, plan, net) - ref).abs().max() > 1e-4


def test_misaligned_pooling_grid_would_break_exactness(net) -> None:
    # why strides are multiples of 2**scales: shifting the frame by one pixel changes a UNet's output
    x = torch.rand(1, 1, 96, 96)
    with torch.no_grad():
        a = net(x)[..., 8:-8, 9:-8]
        b = net(torch.roll(x, -1, dims=-1))[..., 8:-8, 8:-9]
    assert (a - b).abs().max() > 1e-4


@pytest.mark.parametrize("window", list(BlendWindow))
def test_weights_cover_every_pixel_and_cosine_is_partition_of_unity(window) -> None:
    plan = plan_tiles(150, 90, tile=64, margin=6, overlap=10, multiple=4, window=window)
    ones = torch.ones(plan.tiles_per_frame * 2, 1, 64, 64)
    fused = fuse_tiles(ones, plan, 2)
    torch.testing.assert_close(fused, torch.ones(2, 150, 90))
    if window is BlendWindow.cosine:
        # the raw weights already sum to one: no normalisation needed, nothing for a seam to hide in
        assert plan.overlap >= 10
        torch.testing.assert_close(_weight_sum(plan, "cpu"), torch.ones(150, 90), rtol=0, atol=1e-6)


def test_split_layout_is_frame_major_row_major() -> None:
    plan = plan_tiles(40, 70, tile=32, margin=4, overlap=4, multiple=4)
    x = torch.arange(2 * 40 * 70, dtype=torch.float32).reshape(2, 40, 70)
    tiles = split_tiles(x, plan)
    assert tiles.shape == (2 * plan.tiles_per_frame, 1, 32, 32)
    # identity network: fused output is the input exactly
    torch.testing.assert_close(fuse_tiles(tiles, plan, 2), x)
    # second tile of frame 0 is one column stride to the right of the first
    s = plan.cols.stride
    torch.testing.assert_close(tiles[1, 0, :, : 32 - s], tiles[0, 0, :, s:])


def test_plan_rejects_impossible_geometry() -> None:
    with pytest.raises(ValueError, match="multiple"):
        plan_tiles(100, 100, tile=30, margin=2, overlap=2, multiple=4)
    with pytest.raises(ValueError, match="no room"):
        plan_tiles(100, 100, tile=32, margin=14, overlap=4, multiple=4)
    with pytest.raises(ValueError):
        split_tiles(torch.zeros(10, 10), plan_tiles(10, 10, 32, 2, 2, 4))


def test_no_visible_seam_with_margin_below_reach(net) -> None:
    """Seam metric (see sbd_stream.compute.quality): RMS deviation from whole-frame inference in 4-px bands
    around the hand-over lines relative to the image's std, and the step ratio across those lines.
    The practical setting (margin < reach, cosine hand-over) must be near-invisible, and far better
    than the paper's uniform patch average."""
    torch.manual_seed(3)
    h, w = 300, 260
    x = torch.poisson(torch.full((1, h, w), 0.45)) / 0.45
    plan = plan_tiles(h, w, tile=96, margin=8, overlap=16, multiple=4)
    out = run_tiled(x, plan, net)
    with torch.no_grad():
        ref = whole_frame_reference(x, plan, net)
        paper = paper_patch_average(x[:, None], net, patch=96, stride=80)[:, 0]
        whole = net(x[:, None])[:, 0]
    rows, cols = plan.seam_positions(0), plan.seam_positions(1)
    ours = seam_error(out.numpy(), ref.numpy(), rows, cols)
    prow, pcol = paper_seam_lines(h, 96, 80), paper_seam_lines(w, 96, 80)
    theirs = seam_error(paper.numpy(), whole.numpy(), prow, pcol)
    assert ours < 1e-3
    assert theirs > 100 * ours
    assert abs(seam_step_ratio(out.numpy(), rows, cols) - seam_step_ratio(ref.numpy(), rows, cols)) < 0.01


def test_tiling_runs_on_any_device_dtype_of_counts(net) -> None:
    x = torch.randint(0, 3, (2, 70, 50), dtype=torch.int32).to(torch.float32)
    plan = plan_tiles(70, 50, tile=64, margin=8, overlap=8, multiple=4)
    assert run_tiled(x, plan, net).dtype == torch.float32
