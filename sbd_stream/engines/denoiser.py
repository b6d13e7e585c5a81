"""The denoise stage: counts in, denoised counts out, through normalise -> tile -> engine -> fuse.

Every step stays on the engine's device; the only host round trip is ONNX Runtime on CPU, where host
*is* the device. Tile plans are cached per frame shape, because a stream's frames all share one; the
cache keeps the most recently used shapes only, so a caller feeding many sizes (a notebook sweeping crops,
a service fed every size a detector offers) does not grow it without end.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from sbd_stream.compute.model import support_extent
from sbd_stream.compute.normalisation import Normalisation
from sbd_stream.compute.tiling import (
    BlendWindow,
    TilePlan,
    fuse_tiles,
    pad_frames,
    plan_tiles,
    split_tiles,
)
from sbd_stream.engines import Engine, EngineKind, load_engine

log = logging.getLogger(__name__)

PLAN_CACHE_SIZE = 32
"""Frame shapes whose tile plans stay cached (least recently used shapes go first)."""


class Denoiser:
    """A loaded engine plus the tiling and normalisation its card prescribes (overridable)."""

    def __init__(
        self,
        engine: Engine,
        tile: int | None = None,
        margin: int | None = None,
        overlap: int | None = None,
        dose: float | None = None,
        window: BlendWindow | str = BlendWindow.cosine,
    ) -> None:
        card = engine.card
        self.engine = engine
        self.model_multiple = 2**card.scales * card.space_to_depth if card.architecture == "unet" else 2
        self.tile = tile or card.tiling.tile
        self.margin = card.tiling.margin if margin is None else margin
        self.overlap = card.tiling.overlap if overlap is None else overlap
        self.window = BlendWindow(window)
        self.normalisation: Normalisation = card.normalisation
        self.dose = dose or card.normalisation.dose
        self.fixed_tile = engine.kind == "tensorrt"
        self._plans: OrderedDict[tuple[int, int], TilePlan] = OrderedDict()
        self._plans_lock = threading.Lock()
        if self.tile % self.model_multiple:
            raise ValueError(f"tile {self.tile} must be a multiple of {self.model_multiple}")

    @classmethod
    def load(
        cls,
        engine: EngineKind | str = EngineKind.auto,
        engine_dir: str | Path | None = None,
        device: str | None = None,
        tile: int | None = None,
        margin: int | None = None,
        overlap: int | None = None,
        dose: float | None = None,
        batch: int = 16,
        precision: str = "fp16",
        threads: int | None = None,
    ) -> Denoiser:
        eng = load_engine(
            engine, engine_dir, device, batch=batch, precision=precision, tile=tile, threads=threads
        )
        return cls(eng, tile=tile, margin=margin, overlap=overlap, dose=dose)

    @property
    def card(self) -> dict[str, Any]:
        return self.engine.card.model_dump(mode="json")

    @property
    def engine_id(self) -> str:
        return self.engine.engine_id

    @property
    def device(self) -> torch.device:
        return self.engine.device

    def exact_margin(self) -> int:
        """Margin at which tiled output equals whole-frame output (the network's reach)."""
        return max(support_extent(self.engine.card.build_model()))

    def plan(self, height: int, width: int) -> TilePlan:
        key = (height, width)
        with self._plans_lock:
            cached = self._plans.get(key)
            if cached is not None:
                self._plans.move_to_end(key)
                return cached
        tile, margin, overlap = self.tile, self.margin, self.overlap
        whole = max(height, width)
        whole += -whole % self.model_multiple
        if not self.fixed_tile and whole <= tile:
            # The whole frame fits one tile: no seam to hide, so no margin either. The network sees
            # the frame as in training (whole frames, its own edge padding) at the least compute;
            # a margin would grow a 256^2 working frame to 416^2 (2.6x the work) for nothing.
            tile, margin, overlap = max(whole, self.model_multiple), 0, 0
        plan = plan_tiles(height, width, tile, margin, overlap, self.model_multiple, self.window)
        with self._plans_lock:
            self._plans[key] = plan
            self._plans.move_to_end(key)
            while len(self._plans) > PLAN_CACHE_SIZE:
                self._plans.popitem(last=False)
        return plan

    def denoise(self, frames: torch.Tensor, dose: float | None = None) -> torch.Tensor:
        """(B, H, W) or (H, W) counts -> float32 denoised counts on the engine's device."""
        single = frames.ndim == 2
        if single:
            frames = frames.unsqueeze(0)
        if frames.ndim != 3 or frames.shape[0] == 0:
            raise ValueError(f"expected (B, H, W) frames with B >= 1, got shape {tuple(frames.shape)}")
        d = dose or self.dose
        x = self.normalisation.to_input(frames.to(self.device, non_blocking=True), d)
        plan = self.plan(x.shape[1], x.shape[2])
        if plan.tiles_per_frame == 1 and plan.margin == 0 and plan.overlap == 0:
            fused = self._whole_frames(x, plan)
        else:
            tiles = split_tiles(x, plan)
            fused = fuse_tiles(self._run(tiles), plan, x.shape[0])
        result = self.normalisation.to_counts(fused, d)
        return result[0] if single else result

    def _run(self, tiles: torch.Tensor) -> torch.Tensor:
        """The engine over (N, 1, t, t) tiles in chunks of its largest batch (no copy for one chunk)."""
        step = self.engine.max_batch
        outs = [self.engine.run(tiles[i : i + step]) for i in range(0, tiles.shape[0], step)]
        return (outs[0] if len(outs) == 1 else torch.cat(outs)).to(self.device)

    def _whole_frames(self, x: torch.Tensor, plan: TilePlan) -> torch.Tensor:
        """One tile per frame without margin: the padded frame is the tile, the crop is the result.

        The same numbers as split + overlap-add (the window is 1 everywhere, the weight sum 1), without
        the window multiply, the fold and the weight division: ~15 ms per 256^2 frame on a loaded CPU.
        """
        out = self._run(pad_frames(x, plan).contiguous())
        r0, c0 = plan.rows.pad_before, plan.cols.pad_before
        return out[:, 0, r0 : r0 + plan.rows.length, c0 : c0 + plan.cols.length].to(torch.float32)
