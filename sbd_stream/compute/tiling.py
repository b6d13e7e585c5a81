"""Overlap-tile inference: split frames into overlapping tiles, run them as one batch, fuse them back.

Pure, device-agnostic torch: tiles are gathered from one strided view and fused with a few slice-adds
(one per tile row and per tile column, batched over frames), on CPU or GPU alike.

Geometry (per axis). Every tile lies inside the frame: the first is flush with the frame's first pixel,
the last with its last, the rest spread evenly between them. A side of a tile that lies on the frame's
border sees exactly what whole-frame inference sees there (the network's own zero padding, as in
training on whole frames), so it is kept right up to the border; an inner side keeps a core ``margin``
pixels away from the tile's edge, because pixels nearer it see the tile's zero padding instead of the
neighbouring image. Neighbouring cores overlap in a hand-over band (at least ``overlap`` pixels) where a
complementary sin^2 / cos^2 ramp hands one tile over to the next, so weights sum to exactly one. With
``margin`` >= the network's reach, every kept pixel is exact and the fused frame equals whole-frame
inference to float tolerance, borders included. Mirroring the frame instead (the old plan) gave the
border tiles invented context: 17 dB worse in the band 16-64 px from a vacuum edge.

The frame is padded at its far end only (bottom, right): to the model multiple, as whole-frame inference
pads it. An axis shorter than a tile either gets a shorter tile (``shrink``, for engines that take any
shape: then a frame that fits one tile is exactly the whole frame) or is padded to one tile, so every
tile has the same shape (a fixed TensorRT tile).

Tile origins are multiples of ``2**scales`` so every tile's max-pool grid lines up with the whole
frame's: without that, tiling a UNet is never exact, whatever the margin.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

import torch
from torch.nn import functional as F


class BlendWindow(StrEnum):
    cosine = "cosine"  # partition of unity over the hand-over band, zero in the inner margins
    uniform = "uniform"  # plain average of every tile covering a pixel, inner margins cropped
    gaussian = "gaussian"  # MONAI / nnU-Net importance map (sigma = tile / 8), inner margins cropped


@dataclass(frozen=True)
class AxisPlan:
    """Tiling of one axis: tile origins, the pixels each tile keeps and the hand-over bands.

    ``tile`` is the tiles' length along this axis (the plan's tile, or less where ``shrink`` fitted it to
    a shorter axis). ``kept[k]`` is the half-open range of frame pixels tile ``k`` may contribute (its
    core: the full tile on a side flush with the frame's border, ``margin`` in from an inner side);
    ``bands[k]`` is the ``(start, width)`` of the hand-over from tile ``k`` to tile ``k + 1``.
    """

    length: int
    tile: int
    padded: int
    origins: tuple[int, ...]
    kept: tuple[tuple[int, int], ...]
    bands: tuple[tuple[int, int], ...]

    @property
    def count(self) -> int:
        return len(self.origins)

    @property
    def stride(self) -> int:
        """The largest step between neighbouring tile origins (0 for one tile)."""
        return max((b - a for a, b in itertools.pairwise(self.origins)), default=0)

    @property
    def pad_before(self) -> int:
        """Always 0: tiles start at the frame's first pixel; kept for callers that crop with it."""
        return 0

    @property
    def pad_after(self) -> int:
        return self.padded - self.length


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

    @property
    def tile_shape(self) -> tuple[int, int]:
        """(rows, cols) of every tile: ``tile`` x ``tile`` unless the plan shrank a short axis."""
        return self.rows.tile, self.cols.tile

    def seam_positions(self, axis: int) -> list[int]:
        """Frame coordinates of the middle of each hand-over band along ``axis`` (0 rows, 1 cols)."""
        ax = self.rows if axis == 0 else self.cols
        return [start + width // 2 for start, width in ax.bands]


def _max_step(tile: int, margin: int, overlap: int, multiple: int) -> int:
    """Largest origin step that leaves neighbouring cores ``overlap`` pixels in common (pooling grid)."""
    step = tile - 2 * margin - overlap
    step -= step % multiple
    if step < multiple:
        raise ValueError(
            f"tile {tile} leaves no room for margin {margin} x 2 and overlap {overlap} "
            f"(stride would be {step}, needs >= {multiple})"
        )
    return step


def plan_axis(
    length: int, tile: int, margin: int, overlap: int, multiple: int, shrink: bool = False
) -> AxisPlan:
    if length < 1:
        raise ValueError(f"frame length must be >= 1, got {length}")
    step = _max_step(tile, margin, overlap, multiple)
    extended = length + (-length % multiple)  # what whole-frame inference pads the frame to
    if extended <= tile:  # one tile: the frame itself (shrink) or the frame padded to one tile
        size = extended if shrink else tile
        return AxisPlan(length, size, size, (0,), ((0, size),), ())
    padded = extended
    units, per_step = (extended - tile) // multiple, step // multiple
    count = -(-units // per_step) + 1
    # first tile flush with the frame's start, last with its (padded) end, even steps between
    origins = tuple(multiple * (k * units // (count - 1)) for k in range(count))
    kept = tuple(
        (0 if k == 0 else o + margin, padded if k == count - 1 else o + tile - margin)
        for k, o in enumerate(origins)
    )
    # band k: the cores' common part, clipped at the midpoints between neighbouring bands' centres so
    # that bands never overlap (each pixel blends at most two tiles per axis: a partition of unity)
    centres2 = [kept[k + 1][0] + kept[k][1] for k in range(count - 1)]  # twice each band's centre
    mids = [(a + b) // 4 for a, b in itertools.pairwise(centres2)]
    bands = []
    for k in range(count - 1):
        lo = max(kept[k + 1][0], mids[k - 1] if k > 0 else 0)
        hi = min(kept[k][1], mids[k] if k < count - 2 else padded)
        bands.append((lo, hi - lo))
    return AxisPlan(length, tile, padded, origins, kept, tuple(bands))


def plan_tiles(
    height: int,
    width: int,
    tile: int,
    margin: int,
    overlap: int,
    multiple: int = 1,
    window: BlendWindow | str = BlendWindow.cosine,
    shrink: bool = False,
) -> TilePlan:
    """Plan the tiling of a frame; ``multiple`` is the network's size granularity (``2**scales``).

    The plan's ``overlap`` is the hand-over width at the largest step: the requested one, widened by
    rounding the step down to the pooling grid. Bands are wider where the tiles sit closer together.
    ``shrink``: an axis shorter than a tile gets a tile as long as the axis (padded to ``multiple``)
    instead of being padded to a whole tile; only for engines that take any tile shape.
    """
    if tile % multiple:
        raise ValueError(f"tile {tile} must be a multiple of {multiple}")
    if margin < 0 or overlap < 0:
        raise ValueError("margin and overlap must be >= 0")
    overlap = tile - 2 * margin - _max_step(tile, margin, overlap, multiple)
    return TilePlan(
        tile,
        margin,
        overlap,
        plan_axis(height, tile, margin, overlap, multiple, shrink),
        plan_axis(width, tile, margin, overlap, multiple, shrink),
        BlendWindow(window),
    )


def axis_weights(ax: AxisPlan, window: BlendWindow | str) -> torch.Tensor:
    """Blending weights of each tile along one axis (float64, ``count`` x ``ax.tile``), summing to 1.

    The 2-D weight of a tile is the outer product of its row and column weights; since both axes sum
    to one at every pixel, so does the 2-D weight, and fusion needs no division.
    """
    window = BlendWindow(window)
    tile = ax.tile
    x = torch.arange(tile, dtype=torch.float64)
    w = torch.zeros(ax.count, tile, dtype=torch.float64)
    for k, origin in enumerate(ax.origins):
        pos = origin + x
        if window is BlendWindow.cosine:
            wk = torch.ones(tile, dtype=torch.float64)
            if k > 0:  # ramp up over the band from tile k - 1
                wk = wk * _ramp_up(pos, *ax.bands[k - 1])
            if k < ax.count - 1:  # ramp down over the band to tile k + 1
                wk = wk * (1.0 - _ramp_up(pos, *ax.bands[k]))
        else:
            wk = torch.ones(tile, dtype=torch.float64)
            if window is BlendWindow.gaussian:
                wk = torch.exp(-0.5 * ((x - (tile - 1) / 2) / (tile / 8.0)) ** 2)
            lo, hi = ax.kept[k]
            wk = wk * ((pos >= lo) & (pos < hi))
        w[k] = wk
    if window is not BlendWindow.cosine:  # average of the tiles covering each pixel
        index = (torch.tensor(ax.origins).unsqueeze(1) + torch.arange(tile)).flatten()
        total = torch.zeros(ax.padded, dtype=torch.float64).index_add_(0, index, w.flatten())
        w = w / total[index].reshape(w.shape).clamp_min(1e-300)
    return w


def _ramp_up(pos: torch.Tensor, start: int, width: int) -> torch.Tensor:
    """0 before the band, sin^2 over it, 1 after; 1 - this is the neighbour's cos^2."""
    phase = ((pos - start + 0.5) / max(width, 1)).clamp(0.0, 1.0)
    up = torch.sin(0.5 * math.pi * phase) ** 2
    return torch.where(pos < start, 0.0, torch.where(pos >= start + width, 1.0, up))


@lru_cache(maxsize=32)
def _cached_weights(plan: TilePlan, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column weights of every tile (float32), kept on the device per plan: a few KiB, where the
    2-D weights of a large frame's tiles would be a frame's worth per cached plan."""
    wr = axis_weights(plan.rows, plan.window)
    wc = axis_weights(plan.cols, plan.window)
    return wr.to(device=device, dtype=torch.float32), wc.to(device=device, dtype=torch.float32)


@lru_cache(maxsize=32)
def _cached_index(plan: TilePlan, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Tile origins in units of the gather grid (the model multiple every origin is on)."""
    grid = _grid(plan)
    rows = torch.tensor([o // grid for o in plan.rows.origins], device=device)
    cols = torch.tensor([o // grid for o in plan.cols.origins], device=device)
    return rows[:, None], cols[None, :]


def _grid(plan: TilePlan) -> int:
    return math.gcd(*plan.tile_shape, *plan.rows.origins, *plan.cols.origins)


def pad_frames(frames: torch.Tensor, plan: TilePlan) -> torch.Tensor:
    """(B, H, W) -> (B, 1, Hp, Wp), padded at the far ends only (bottom, right), as whole-frame inference
    pads to the model multiple: mirrored, or replicated where the frame is smaller than the padding."""
    pads = (0, plan.cols.pad_after, 0, plan.rows.pad_after)
    x = frames.unsqueeze(1)
    h, w = frames.shape[-2:]
    reflect_ok = pads[1] < w and pads[3] < h
    return F.pad(x, pads, mode="reflect" if reflect_ok else "replicate")


def split_tiles(frames: torch.Tensor, plan: TilePlan) -> torch.Tensor:
    """(B, H, W) frames -> (B * tiles_per_frame, 1, *tile_shape), frame-major, row-major within a frame."""
    if frames.ndim != 3:
        raise ValueError(f"expected (B, H, W) frames, got shape {tuple(frames.shape)}")
    padded = pad_frames(frames, plan)
    (th, tw), grid = plan.tile_shape, _grid(plan)
    view = padded.unfold(2, th, grid).unfold(3, tw, grid)  # B,1,gy,gx,th,tw: a view, nothing copied yet
    rows, cols = _cached_index(plan, str(padded.device))
    tiles = view[:, 0, rows, cols]  # B,ny,nx,th,tw: one gather
    return tiles.reshape(-1, 1, th, tw)


def fuse_tiles(tiles: torch.Tensor, plan: TilePlan, batch: int) -> torch.Tensor:
    """Weighted overlap-add of processed tiles back into (B, H, W) frames.

    One multiply-add per tile column (column weights), then one per tile row (row weights), each batched
    over frames and the other axis; a fixed order, so the result is deterministic on every device (no
    atomics), and no division: the weights are a partition of unity.
    """
    (th, tw), ny, nx = plan.tile_shape, plan.rows.count, plan.cols.count
    if tiles.shape != (batch * ny * nx, 1, th, tw):
        raise ValueError(f"expected tiles of shape {(batch * ny * nx, 1, th, tw)}, got {tuple(tiles.shape)}")
    wr, wc = _cached_weights(plan, str(tiles.device))
    x = tiles.to(torch.float32).reshape(batch, ny, nx, th, tw)
    strips = x.new_zeros(batch, ny, th, plan.cols.padded)
    for j, origin in enumerate(plan.cols.origins):
        strips[..., origin : origin + tw].addcmul_(x[:, :, j], wc[j])
    out = x.new_zeros(batch, plan.rows.padded, plan.cols.padded)
    for i, origin in enumerate(plan.rows.origins):
        out[:, origin : origin + th].addcmul_(strips[:, i], wr[i].unsqueeze(1))
    return out[:, : plan.rows.length, : plan.cols.length]


def whole_frame_reference(frames: torch.Tensor, plan: TilePlan, net: torch.nn.Module) -> torch.Tensor:
    """Run ``net`` once on the whole (far-end padded) frame: what exact tiling must reproduce."""
    out = net(pad_frames(frames, plan))
    return out[:, 0, : plan.rows.length, : plan.cols.length]
