"""Overlap-tile inference: split frames into overlapping tiles, run them as one batch, fuse them back.

Pure, device-agnostic torch: tiles are cut with ``unfold`` and fused with ``fold``, so the work is a few
kernel launches whatever the frame size, on CPU or GPU alike.

Geometry (per axis). A tile of ``tile`` pixels keeps a core that stays ``margin`` pixels away from its
edges, because pixels nearer the edge see the tile's zero padding instead of the neighbouring image.
Neighbouring cores overlap by ``overlap`` pixels, where a complementary cosine ramp hands one tile over
to the next, so weights sum to exactly one: no seam from normalisation, and a smooth hand-over where the
margin is smaller than the field of view. With ``margin`` >= the network's reach, every kept pixel is
exact and the fused frame equals whole-frame inference on the same padded frame to float tolerance.

Tile origins step by a multiple of ``2**scales`` so every tile's max-pool grid lines up with the
whole frame's: without that, tiling a UNet is never exact, whatever the margin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

import torch
from torch.nn import functional as F


class BlendWindow(StrEnum):
    cosine = "cosine"  # partition of unity over the overlap band, zero in the margin
    uniform = "uniform"  # plain average of every tile covering a pixel, margin cropped
    gaussian = "gaussian"  # MONAI / nnU-Net importance map (sigma = tile / 8), margin cropped


@dataclass(frozen=True)
class AxisPlan:
    """Tiling of one axis: frame length, tile count, stride and padding before/after."""

    length: int
    count: int
    stride: int
    pad_before: int
    pad_after: int

    @property
    def padded(self) -> int:
        return self.length + self.pad_before + self.pad_after


@dataclass(frozen=True)
class TilePlan:
    """Where the tiles of an ``height`` x ``width`` frame lie."""

    tile: int
    margin: int
    overlap: int
    rows: AxisPlan
    cols: AxisPlan
    window: BlendWindow = BlendWindow.cosine

    @property
    def tiles_per_frame(self) -> int:
        return self.rows.count * self.cols.count

    def seam_positions(self, axis: int) -> list[int]:
        """Frame coordinates of the middle of each hand-over band along ``axis`` (0 rows, 1 cols)."""
        ax = self.rows if axis == 0 else self.cols
        starts = [k * ax.stride + self.margin - ax.pad_before for k in range(1, ax.count)]
        return [s + self.overlap // 2 for s in starts]


def plan_axis(length: int, tile: int, margin: int, overlap: int, multiple: int) -> AxisPlan:
    if length < 1:
        raise ValueError(f"frame length must be >= 1, got {length}")
    stride = tile - 2 * margin - overlap
    stride -= stride % multiple
    if stride < multiple:
        raise ValueError(
            f"tile {tile} leaves no room for margin {margin} x 2 and overlap {overlap} "
            f"(stride would be {stride}, needs >= {multiple})"
        )
    # leading padding puts frame pixel 0 at the first tile's full-weight region
    pad_before = margin + overlap
    # tiles needed so the last core's full-weight region reaches the frame's last pixel
    reach = pad_before + length - (tile - margin - overlap)
    count = max(1, math.ceil(reach / stride) + 1)
    padded = (count - 1) * stride + tile
    return AxisPlan(length, count, stride, pad_before, padded - pad_before - length)


def plan_tiles(
    height: int,
    width: int,
    tile: int,
    margin: int,
    overlap: int,
    multiple: int = 1,
    window: BlendWindow | str = BlendWindow.cosine,
) -> TilePlan:
    """Plan the tiling of a frame; ``multiple`` is the network's size granularity (``2**scales``)."""
    if tile % multiple:
        raise ValueError(f"tile {tile} must be a multiple of {multiple}")
    if margin < 0 or overlap < 0:
        raise ValueError("margin and overlap must be >= 0")
    # rounding the stride to the pooling grid widens the hand-over band; use the widened band so
    # neighbouring ramps meet exactly and the weights stay a partition of unity
    stride = tile - 2 * margin - overlap
    stride -= stride % multiple
    if stride >= multiple:
        overlap = tile - 2 * margin - stride
    return TilePlan(
        tile,
        margin,
        overlap,
        plan_axis(height, tile, margin, overlap, multiple),
        plan_axis(width, tile, margin, overlap, multiple),
        BlendWindow(window),
    )


def blend_ramp(tile: int, margin: int, overlap: int, window: BlendWindow | str) -> torch.Tensor:
    """One axis of the blending window (float64, length ``tile``)."""
    window = BlendWindow(window)
    t = torch.arange(tile, dtype=torch.float64)
    w = torch.ones(tile, dtype=torch.float64)
    if window is BlendWindow.gaussian:
        sigma = tile / 8.0
        w = torch.exp(-0.5 * ((t - (tile - 1) / 2) / sigma) ** 2)
    elif window is BlendWindow.cosine and overlap > 0:
        # sin^2 up over the band after the margin; the neighbour's cos^2 completes it to exactly 1
        up = torch.sin(0.5 * math.pi * (torch.arange(overlap, dtype=torch.float64) + 0.5) / overlap) ** 2
        w[margin : margin + overlap] = up
        w[tile - margin - overlap : tile - margin] = up.flip(0)
    if margin > 0:
        w[:margin] = 0.0
        w[tile - margin :] = 0.0
    return w


def compute_blend_window(
    tile: int, margin: int, overlap: int, window: BlendWindow | str, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """2-D blending weights of one tile (``tile`` x ``tile``, float32), like MONAI's importance map."""
    r = blend_ramp(tile, margin, overlap, window)
    return torch.outer(r, r).to(device=device, dtype=torch.float32)


@lru_cache(maxsize=32)
def _cached_window(tile: int, margin: int, overlap: int, window: BlendWindow, device: str) -> torch.Tensor:
    """The blending window stays on the device between frames instead of being rebuilt per batch."""
    return compute_blend_window(tile, margin, overlap, window, device)


def pad_frames(frames: torch.Tensor, plan: TilePlan) -> torch.Tensor:
    """(B, H, W) -> (B, 1, Hp, Wp), mirrored at the borders (replicated where the frame is too small)."""
    pads = (plan.cols.pad_before, plan.cols.pad_after, plan.rows.pad_before, plan.rows.pad_after)
    x = frames.unsqueeze(1)
    h, w = frames.shape[-2:]
    reflect_ok = max(pads[0], pads[1]) < w and max(pads[2], pads[3]) < h
    return F.pad(x, pads, mode="reflect" if reflect_ok else "replicate")


def split_tiles(frames: torch.Tensor, plan: TilePlan) -> torch.Tensor:
    """(B, H, W) frames -> (B * tiles_per_frame, 1, tile, tile), frame-major, row-major within a frame."""
    if frames.ndim != 3:
        raise ValueError(f"expected (B, H, W) frames, got shape {tuple(frames.shape)}")
    padded = pad_frames(frames, plan)
    t = plan.tile
    tiles = padded.unfold(2, t, plan.rows.stride).unfold(3, t, plan.cols.stride)  # B,1,ny,nx,t,t
    return tiles.permute(0, 2, 3, 1, 4, 5).reshape(-1, 1, t, t)


def fuse_tiles(tiles: torch.Tensor, plan: TilePlan, batch: int) -> torch.Tensor:
    """Weighted overlap-add of processed tiles back into (B, H, W) frames."""
    t, n = plan.tile, plan.tiles_per_frame
    if tiles.shape != (batch * n, 1, t, t):
        raise ValueError(f"expected tiles of shape {(batch * n, 1, t, t)}, got {tuple(tiles.shape)}")
    window = _cached_window(t, plan.margin, plan.overlap, plan.window, str(tiles.device))
    cols = (tiles.to(torch.float32) * window).reshape(batch, n, t * t).transpose(1, 2)
    size = (plan.rows.padded, plan.cols.padded)
    stride = (plan.rows.stride, plan.cols.stride)
    summed = F.fold(cols, output_size=size, kernel_size=t, stride=stride)
    norm = _weight_sum(plan, str(tiles.device))
    r0, c0 = plan.rows.pad_before, plan.cols.pad_before
    out = summed[:, 0, r0 : r0 + plan.rows.length, c0 : c0 + plan.cols.length]
    return out / norm


@lru_cache(maxsize=32)
def _weight_sum(plan: TilePlan, device: str) -> torch.Tensor:
    """Sum of the blending weights over the frame; cached since every frame of a stream shares it."""
    t, n = plan.tile, plan.tiles_per_frame
    window = _cached_window(t, plan.margin, plan.overlap, plan.window, device)
    cols = window.reshape(1, t * t, 1).expand(1, t * t, n)
    size = (plan.rows.padded, plan.cols.padded)
    summed = F.fold(cols, output_size=size, kernel_size=t, stride=(plan.rows.stride, plan.cols.stride))
    r0, c0 = plan.rows.pad_before, plan.cols.pad_before
    norm = summed[0, 0, r0 : r0 + plan.rows.length, c0 : c0 + plan.cols.length]
    if bool((norm <= 0).any()):
        raise ValueError("tile plan leaves pixels with zero weight; increase tile or reduce margin/overlap")
    return norm


def whole_frame_reference(frames: torch.Tensor, plan: TilePlan, net: torch.nn.Module) -> torch.Tensor:
    """Run ``net`` once on the whole padded frame: what exact tiling must reproduce (used in tests)."""
    padded = pad_frames(frames, plan)
    out = net(padded)
    r0, c0 = plan.rows.pad_before, plan.cols.pad_before
    return out[:, 0, r0 : r0 + plan.rows.length, c0 : c0 + plan.cols.length]
