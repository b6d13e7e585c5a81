"""Overlap-tile inference: exactness against whole-frame inference (borders included), seams, layout,
edge cases."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from benchmarks.paper_tiling import paper_patch_average, paper_seam_lines
from sbd_stream.compute.model import UNet, support_extent
from sbd_stream.compute.quality import seam_error, seam_step_ratio
from sbd_stream.compute.tiling import (
    BlendWindow,
    axis_weights,
    fuse_tiles,
    pad_frames,
    plan_axis,
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


def run_whole(x: torch.Tensor, net: torch.nn.Module, multiple: int = 4) -> torch.Tensor:
    """What the network gives the frame run whole, as in training: padded at the far ends to the model
    multiple only, the network's own zero padding at every border. Built here, not by the module."""
    h, w = x.shape[-2:]
    padded = F.pad(x[:, None], (0, -w % multiple, 0, -h % multiple), mode="reflect")
    with torch.no_grad():
        return net(padded)[:, 0, :h, :w]


@pytest.mark.parametrize("shape", [(101, 77), (200, 173), (64, 64), (5, 9), (1, 1), (257, 129), (300, 40)])
def test_tiled_equals_whole_frame_with_margin_at_least_reach(net, shape) -> None:
    reach = max(support_extent(net))
    plan = plan_tiles(*shape, tile=128, margin=reach, overlap=12, multiple=4)
    x = torch.poisson(torch.full((2, *shape), 0.45))
    out = run_tiled(x, plan, net)
    with torch.no_grad():
        ref = whole_frame_reference(x, plan, net)
    assert out.shape == (2, *shape)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(200, 173), (257, 129), (130, 130), (403, 141)])
def test_tiled_frame_equals_the_frame_run_whole_borders_included(net, shape) -> None:
    """Frames larger than a tile: the border tiles lie flush with the frame's edges and see what whole-frame
    inference sees there, so with margin >= reach the result is the whole-frame result to float tolerance.
    Mirroring the frame by the margin (the old plan) invented context beyond the edge and failed here."""
    reach = max(support_extent(net))
    plan = plan_tiles(*shape, tile=128, margin=reach, overlap=12, multiple=4)
    assert plan.tiles_per_frame > 1
    torch.manual_seed(5)
    x = torch.poisson(torch.full((1, *shape), 0.45))
    x[:, :, :6] += 4.0  # bright content at an edge: mirrored context would double it
    torch.testing.assert_close(run_tiled(x, plan, net), run_whole(x, net), rtol=1e-5, atol=1e-5)


def test_border_band_as_good_as_whole_frame_with_margin_below_reach(net) -> None:
    """The practical setting (margin < reach): the frame's border band is as close to whole-frame inference
    as the interior, instead of carrying an error of its own (17 dB worse at a vacuum edge with mirroring)."""
    torch.manual_seed(11)
    h, w = 300, 260
    x = torch.poisson(torch.full((1, h, w), 0.45))
    plan = plan_tiles(h, w, tile=96, margin=8, overlap=16, multiple=4)
    diff = (run_tiled(x, plan, net) - run_whole(x, net))[0].abs()
    border = torch.ones(h, w, dtype=torch.bool)
    border[16:-16, 16:-16] = False
    interior = diff[16:-16, 16:-16]
    assert diff[border].max() <= interior.max() + 1e-6
    assert diff[border].mean() <= 2 * interior.mean() + 1e-6


def test_margin_below_reach_is_not_exact(net) -> None:
    # guards the exactness tests: they must be able to fail
    plan = plan_tiles(200, 200, tile=64, margin=2, overlap=4, multiple=4)
    x = torch.poisson(torch.full((1, 200, 200), 0.45))
    with torch.no_grad():
        ref = whole_frame_reference(x, plan, net)
    assert (run_tiled(x, plan, net) - ref).abs().max() > 1e-4


def test_misaligned_pooling_grid_would_break_exactness(net) -> None:
    # why tile origins are multiples of 2**scales: shifting the frame by one pixel changes a UNet's output
    x = torch.rand(1, 1, 96, 96)
    with torch.no_grad():
        a = net(x)[..., 8:-8, 9:-8]
        b = net(torch.roll(x, -1, dims=-1))[..., 8:-8, 8:-9]
    assert (a - b).abs().max() > 1e-4


@pytest.mark.parametrize("window", list(BlendWindow))
def test_weights_cover_every_pixel_and_cosine_is_partition_of_unity(window) -> None:
    plan = plan_tiles(150, 90, tile=64, margin=6, overlap=10, multiple=4, window=window)
    ones = torch.ones(plan.tiles_per_frame * 2, 1, 64, 64)
    torch.testing.assert_close(fuse_tiles(ones, plan, 2), torch.ones(2, 150, 90))
    if window is BlendWindow.cosine:
        assert plan.overlap >= 10


@pytest.mark.parametrize(
    ("tile", "margin", "overlap", "multiple"), [(64, 6, 10, 4), (512, 48, 32, 16), (32, 0, 0, 8)]
)
def test_axis_plans_keep_tiles_inside_the_frame_for_every_length(tile, margin, overlap, multiple) -> None:
    """Every length: first tile at 0, last flush with the (multiple-padded) end, origins on the pooling
    grid, bands inside both cores and apart, weights a partition of unity that is zero off each core."""
    step = plan_tiles(1, 1, tile, margin, overlap, multiple)
    for length in range(1, 3 * tile + 2 * multiple + 1, 3):
        ax = plan_axis(length, tile, margin, step.overlap, multiple)
        assert ax.origins[0] == 0 and ax.padded == max(length + -length % multiple, tile)
        assert ax.origins[-1] == ax.padded - tile and ax.pad_before == 0
        assert all(o % multiple == 0 for o in ax.origins)
        assert ax.stride <= tile - 2 * margin - step.overlap
        for k, (start, width) in enumerate(ax.bands):
            assert ax.kept[k + 1][0] <= start and start + width <= ax.kept[k][1]
            if k + 1 < len(ax.bands):
                assert start + width <= ax.bands[k + 1][0]
        for window in BlendWindow:
            w = axis_weights(ax, window)
            total = torch.zeros(ax.padded, dtype=torch.float64)
            for k, o in enumerate(ax.origins):
                total[o : o + tile] += w[k]
                pos = torch.arange(o, o + tile)
                assert not w[k][(pos < ax.kept[k][0]) | (pos >= ax.kept[k][1])].any()
            torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=1e-12)


def test_split_layout_is_frame_major_row_major() -> None:
    plan = plan_tiles(40, 70, tile=32, margin=4, overlap=4, multiple=4)
    x = torch.arange(2 * 40 * 70, dtype=torch.float32).reshape(2, 40, 70)
    tiles = split_tiles(x, plan)
    assert tiles.shape == (2 * plan.tiles_per_frame, 1, 32, 32)
    # identity network: fused output is the input exactly
    torch.testing.assert_close(fuse_tiles(tiles, plan, 2), x)
    # tile (i, j) of frame b is the frame at (row origin i, column origin j)
    padded = pad_frames(x, plan)[:, 0]
    for b in range(2):
        for i, r in enumerate(plan.rows.origins):
            for j, c in enumerate(plan.cols.origins):
                got = tiles[(b * plan.rows.count + i) * plan.cols.count + j, 0]
                torch.testing.assert_close(got, padded[b, r : r + 32, c : c + 32])


def test_frames_smaller_than_a_tile_pad_at_the_far_end_only_and_keep_the_tile_shape(net) -> None:
    """A fixed tile (TensorRT) for a frame smaller than it in one or both axes: one tile per short axis,
    the frame padded at its bottom/right as the whole-frame path pads, every tile the same shape."""
    for shape in [(20, 30), (300, 40), (40, 300)]:
        plan = plan_tiles(*shape, tile=128, margin=8, overlap=8, multiple=4)
        x = torch.rand(1, *shape)
        padded = pad_frames(x, plan)[0, 0]
        assert padded.shape == (plan.rows.padded, plan.cols.padded)
        torch.testing.assert_close(padded[: shape[0], : shape[1]], x[0])  # nothing before the frame
        tiles = split_tiles(x, plan)
        assert tiles.shape == (plan.tiles_per_frame, 1, 128, 128)
        assert run_tiled(x, plan, net).shape == (1, *shape)


@pytest.mark.parametrize("shape", [(90, 50), (300, 40), (41, 203)])
def test_shrink_fits_the_tile_to_a_short_axis_so_its_border_is_exact_too(net, shape) -> None:
    """Engines that take any shape (not a fixed TensorRT tile): an axis shorter than a tile gets a tile as
    long as the axis, so no mirrored context lies beyond that edge either, and a frame that fits one tile
    is run exactly as a whole frame."""
    reach = max(support_extent(net))
    plan = plan_tiles(*shape, tile=128, margin=reach, overlap=12, multiple=4, shrink=True)
    short = [(n + -n % 4) for n in shape]
    assert plan.tile_shape == tuple(s if s <= 128 else 128 for s in short)
    x = torch.poisson(torch.full((1, *shape), 0.45))
    x[:, :, -3:] += 4.0  # bright content at the far edge: padding to a whole tile would mirror it
    assert split_tiles(x, plan).shape == (plan.tiles_per_frame, 1, *plan.tile_shape)
    torch.testing.assert_close(run_tiled(x, plan, net), run_whole(x, net), rtol=1e-5, atol=1e-5)


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
    assert rows and cols
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


def test_denoiser_tiled_equals_denoiser_whole_frame(tiny_engine_dir: Path) -> None:
    """The product path: a frame split into tiles at the exact margin gives the same counts as the same
    frame run whole (a tile large enough for it), borders included. Non-square: the whole frame is not
    padded to a square (that mirrored 20 px beyond its right edge)."""
    from sbd_stream.engines import EngineKind
    from sbd_stream.engines.denoiser import Denoiser

    whole = Denoiser.load(EngineKind.torch, tiny_engine_dir, tile=256)
    reach = whole.exact_margin()
    tiled = Denoiser.load(EngineKind.torch, tiny_engine_dir, tile=2 * reach + 44, margin=reach, overlap=8)
    torch.manual_seed(2)
    frames = torch.poisson(torch.full((2, 150, 130), 0.45))
    assert tiled.plan(150, 130).tiles_per_frame > 1 and whole.plan(150, 130).tile_shape == (152, 132)
    with torch.no_grad():
        torch.testing.assert_close(tiled.denoise(frames), whole.denoise(frames), rtol=1e-4, atol=1e-5)
