"""The denoise stage: counts per working pixel in, denoised counts out (normalise -> tile -> engine -> fuse).

Detector frames are binned to the working pixel before they get here (``service/batch.py``; from
Python, ``service/frames.py``).

Every step stays on the engine's device; the only host round trip is ONNX Runtime on CPU, where host
*is* the device. Tile plans are cached per frame shape, because a stream's frames all share one; the
cache keeps the most recently used shapes only, so a caller feeding many sizes (a notebook sweeping crops,
a service fed every size a detector offers) does not grow it without end.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sbd_stream.compute.model import support_extent
from sbd_stream.compute.normalisation import Normalisation
from sbd_stream.compute.tiling import (
    BlendWindow,
    TilePlan,
    fuse_tiles,
    pad_frames,
    plan_axis,
    plan_tiles,
    split_tiles,
)
from sbd_stream.engines import Engine, EngineKind, load_engine

log = logging.getLogger(__name__)

PLAN_CACHE_SIZE = 32
"""Frame shapes whose tile plans stay cached (least recently used shapes go first)."""


class Denoiser:
    """A loaded engine plus the tiling and normalisation its card prescribes (overridable).

    The low-level call: it works at the engine's *working* pixel (0.24 A on the shipped cards) and in
    counts per working pixel; it neither bins nor replaces invalid pixels. Detector frames (0.060 A,
    0.45 counts/px, NaN or saturated pixels) go through ``sbd_stream.service.frames.denoise_frames`` /
    ``FrameDenoiser``, which do what ``sbd-stream denoise`` does to each frame.
    """

    def __init__(
        self,
        engine: Engine,
        tile: int | None = None,
        margin: int | None = None,
        overlap: int | None = None,
        dose: float | None = None,
        window: BlendWindow | str = BlendWindow.cosine,
    ) -> None:
        """``tile`` / ``margin`` / ``overlap`` in working pixels and ``dose`` (expected vacuum counts per
        working pixel per frame) default to the card's; each is checked here, not at the first frame."""
        card = engine.card
        self.engine = engine
        self.model_multiple = 2**card.scales * card.space_to_depth if card.architecture == "unet" else 2
        self.tile = card.tiling.tile if tile is None else tile
        self.margin = card.tiling.margin if margin is None else margin
        self.overlap = card.tiling.overlap if overlap is None else overlap
        self.window = BlendWindow(window)
        self.normalisation: Normalisation = card.normalisation
        self.dose = card.normalisation.dose if dose is None else checked_dose(dose)
        self.fixed_tile = engine.kind == "tensorrt"
        self._plans: OrderedDict[tuple[int, int], TilePlan] = OrderedDict()
        self._plans_lock = threading.Lock()
        check_tiling(self.tile, self.margin, self.overlap, self.model_multiple)

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
        """Load an engine and wrap it: ``engine`` is the backend (auto, tensorrt, onnxruntime, torch),
        ``engine_dir`` the engine's name under the engine root or its path (default: the shipped one).

        ``dose`` is counts per *working* pixel (the card's, 7.2 on the shipped engines, when None), not
        e/A^2 and not the detector's counts per pixel; ``batch`` is the engine's largest batch of tiles;
        ``threads`` its CPU threads. Bad values are refused before the engine is loaded.
        """
        if dose is not None:
            checked_dose(dose)
        for name, value, least in (("tile", tile, 1), ("margin", margin, 0), ("overlap", overlap, 0)):
            if value is not None and value < least:
                raise ValueError(f"{name} must be >= {least} working pixels, got {value}")
        if batch < 1:
            raise ValueError(f"batch must be >= 1 tiles per engine call, got {batch}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1 (or None: the engine's default), got {threads}")
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
            # the frame as in training (whole frames, its own edge padding) at the least compute.
            # Larger frames get the same borders: their border tiles lie flush with the frame, and
            # (shrink) a frame axis shorter than a tile gets a shorter tile instead of mirrored
            # padding, so no edge sees invented context; a fixed TensorRT tile must pad instead.
            tile, margin, overlap = max(whole, self.model_multiple), 0, 0
        plan = plan_tiles(
            height, width, tile, margin, overlap, self.model_multiple, self.window, shrink=not self.fixed_tile
        )
        with self._plans_lock:
            self._plans[key] = plan
            self._plans.move_to_end(key)
            while len(self._plans) > PLAN_CACHE_SIZE:
                self._plans.popitem(last=False)
        return plan

    def denoise(self, frames: torch.Tensor | np.ndarray, dose: float | None = None) -> torch.Tensor:
        """(B, H, W) or (H, W) counts per *working* pixel -> float32 denoised counts, on the engine's device.

        Units: the frames must already be at the engine's working pixel (``card["pixel_size_A"]``) and
        ``dose`` is the expected vacuum counts per working pixel per frame (default: the card's, 7.2 on
        the shipped engines = 0.45 counts per 0.060 A detector pixel summed over 4 x 4). Detector frames
        handed in as they are come out wrong without a word (10x too bright, worse than the raw frame):
        use ``sbd_stream.service.frames.denoise_frames``, which bins, denoises and unbins them.

        A torch tensor or a numpy array (any int / uint / float dtype). NaN / Inf pixels are replaced by
        their frame's mean (``fill_non_finite``) without a word: a host round trip to count them would
        cost the batch stage a sync; ``denoise_frames`` counts and reports them.
        """
        frames = as_counts_tensor(frames)
        single = frames.ndim == 2
        if single:
            frames = frames.unsqueeze(0)
        if frames.ndim != 3 or frames.shape[0] == 0:
            raise ValueError(f"expected (B, H, W) frames with B >= 1, got shape {tuple(frames.shape)}")
        d = self.dose if dose is None else checked_dose(dose)
        x = self.normalisation.to_input(fill_non_finite(frames.to(self.device, non_blocking=True)), d)
        plan = self.plan(x.shape[1], x.shape[2])
        if plan.tiles_per_frame == 1:
            fused = self._whole_frames(x, plan)
        else:
            tiles = split_tiles(x, plan)
            fused = fuse_tiles(self._run(tiles), plan, x.shape[0])
        result = self.normalisation.to_counts(fused, d)
        return result[0] if single else result

    def _run(self, tiles: torch.Tensor) -> torch.Tensor:
        """The engine over (N, 1, th, tw) tiles in chunks of its largest batch (no copy for one chunk)."""
        step = self.engine.max_batch
        outs = [self.engine.run(tiles[i : i + step]) for i in range(0, tiles.shape[0], step)]
        return (outs[0] if len(outs) == 1 else torch.cat(outs)).to(self.device)

    def _whole_frames(self, x: torch.Tensor, plan: TilePlan) -> torch.Tensor:
        """One tile per frame: the frame padded at its far ends is the tile, the crop is the result.

        The same numbers as split + overlap-add (a lone tile is flush with every border of the frame and
        weighs 1 everywhere, a fixed TensorRT tile included), without the gather, the window multiply and
        the overlap-add: ~15 ms per 256^2 frame on a loaded CPU.
        """
        out = self._run(pad_frames(x, plan).contiguous())
        return out[:, 0, : plan.rows.length, : plan.cols.length].to(torch.float32)


def checked_dose(dose: float) -> float:
    """``dose`` as a float if it is a finite number > 0; else ``ValueError`` (0 once meant "the card's")."""
    d = float(dose)
    if not math.isfinite(d) or d <= 0:
        raise ValueError(
            f"dose must be a finite number > 0 (expected vacuum counts per working pixel), got {dose}; "
            "None takes the card's"
        )
    return d


def check_tiling(tile: int, margin: int, overlap: int, multiple: int) -> None:
    """Refuse a tiling no frame could be cut into (a negative tile or margin, no room for the core)."""
    if tile < multiple or tile % multiple:
        raise ValueError(f"tile {tile} must be a positive multiple of {multiple} working pixels")
    if margin < 0 or overlap < 0:
        raise ValueError(f"margin and overlap must be >= 0 working pixels, got {margin} and {overlap}")
    plan_axis(1, tile, margin, overlap, multiple)  # raises when the margins and overlap fill the tile


_TORCH_DTYPES = frozenset(
    np.dtype(t) for t in (np.uint8, np.int8, np.int16, np.int32, np.int64, np.float16, np.float32, np.float64)
)
"""numpy dtypes torch takes as they are (uint16 / uint32 have no arithmetic on every device)."""


def as_counts_tensor(frames: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A tensor of counts from a tensor (as is) or a numpy array / memmap / anything ``np.asarray`` takes.

    Byte order made native, unsigned 16 / 32-bit widened to int64 (exact), uint64 and wider floats to
    float64, a read-only array copied (torch wants writable memory); other dtypes are refused, in a
    tensor as in an array: a bool tensor was denoised as 0 / 1 counts and a complex one lost its
    imaginary part with only torch's warning, where the same numpy array was refused (audit h30).
    """
    if isinstance(frames, torch.Tensor):
        if frames.dtype == torch.bool or frames.is_complex() or frames.is_quantized:
            raise ValueError(f"frames of dtype {frames.dtype}: expected counts (an integer or float dtype)")
        return frames
    a = np.asarray(frames)
    if a.dtype.kind not in "uif":
        raise ValueError(f"frames of dtype {a.dtype}: expected counts (an integer or float dtype)")
    dt = a.dtype.newbyteorder("=")
    if dt not in _TORCH_DTYPES:
        dt = np.dtype(np.int64) if dt.kind == "u" and dt.itemsize < 8 else np.dtype(np.float64)
    a = np.ascontiguousarray(a, dtype=dt)
    return torch.from_numpy(a if a.flags.writeable else a.copy())


def fill_non_finite(frames: torch.Tensor) -> torch.Tensor:
    """Float frames with each NaN / Inf pixel set to its frame's mean of finite pixels (0 if none).

    Why: every convolution spreads one NaN over the network's field of view (a ~200 px disc of NaN).
    Done on the device without asking whether there are any: that question is a host round trip, and
    the batch stage allows itself exactly one download per batch. A few elementwise passes (~1 % of a
    CPU denoise; frames the service edge already cleaned pass through unchanged).
    """
    if not frames.is_floating_point():
        return frames
    ok = torch.isfinite(frames)
    wide = torch.float64 if frames.dtype == torch.float64 else torch.float32
    total = torch.where(ok, frames, 0).sum(dim=(-2, -1), keepdim=True, dtype=wide)
    fill = total / ok.sum(dim=(-2, -1), keepdim=True).clamp(min=1)
    return torch.where(ok, frames, fill.to(frames.dtype))
