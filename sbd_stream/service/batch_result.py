"""What the batch stage (``service/batch.py``) hands the sinks, and the packed device buffer it comes from.

A batch's results (denoised frames, likelihood map, column table, columns per frame, per-frame values)
leave the device packed into one flat buffer: one device -> host download, as on a GPU each extra
transfer is a synchronisation. On a CPU without the likelihood the denoised frames are not packed (no
copy of them); the per-frame values then come apart in ``tail``. Kept out of batch.py, which holds the
stage itself, to keep that module within the size the layer test allows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from sbd_stream.frames import FrameHeader
from sbd_stream.llr_table import COLUMN_FIELDS

__all__ = ["BatchResult", "PackedBatch"]


@dataclass
class BatchResult:
    """What the sinks need of one batch, on the host, at the detector's sampling."""

    headers: list[FrameHeader]
    t_recv: list[float]
    denoised: np.ndarray  # (B, H, W) float32, counts per detector pixel
    likelihood: np.ndarray | None = None  # (B, H, W) float32 LLR painted over column regions
    columns: list[np.ndarray] | None = None  # per frame (K, 4): detector-pixel centre, LLR, region mean
    vacuum: np.ndarray | None = None  # (B,) the frame's vacuum level (meta.vacuum_counts), counts/det. px
    evidence_frames: np.ndarray | None = None  # (B,) other frames whose counts scored the columns (0: own)
    level: np.ndarray | None = None  # (B,) the frame's mean count per detector pixel (its dose)
    blank: np.ndarray | None = None  # (B,) bool: no beam (mean under frame_flags.blank_below)
    measured_vacuum: np.ndarray | None = None  # (B,) own estimated level, also in fixed mode (NaN: none)
    scored_vacuum: np.ndarray | None = None  # (B,) level the LLR was scored against, per frame's worth
    evidence_left_out: np.ndarray | None = None  # (B,) evidence frames left out (blank, dose outside band)
    vacuum_not_flat: np.ndarray | None = None  # (B,) bool: the blocks taken as vacuum were not flat
    timings: dict[str, float] = field(default_factory=dict)
    lane: str = "live"  # "live" (newest first) or "complete" (frames the live lane skipped, done later)

    def __len__(self) -> int:
        return len(self.headers)


@dataclass
class PackedBatch:
    """A batch's results in one flat device buffer, and how to cut it up on the host."""

    packed: torch.Tensor | list[torch.Tensor]  # a list: the parts apart (CPU: no packing copy)
    shape: tuple[int, int, int]
    has_likelihood: bool
    n_columns: int
    timings: dict[str, float]
    tail: torch.Tensor | None = None  # per-frame values kept apart (CPU, no maps: no copy of the frames)

    def unpack(
        self, host: np.ndarray | list[np.ndarray], headers: list[FrameHeader], t_recv: list[float]
    ) -> BatchResult:
        """Cut the host buffer: frames, [map, table, columns per frame], then the per-frame values.

        ``host`` as a list: the same parts apart (``BatchStage.pack_on_device`` False), joined here
        without copying the frame-sized ones; the per-frame values are then in ``tail``."""
        b, h, w = self.shape
        n = b * h * w
        buf: np.ndarray | _Joined = _Joined(host) if isinstance(host, list) else host
        res = BatchResult(headers, t_recv, buf[:n].reshape(b, h, w))
        at = n
        if self.has_likelihood:
            res.likelihood = buf[n : 2 * n].reshape(b, h, w)
            at = 2 * n + 4 * self.n_columns
            table = buf[2 * n : at].reshape(self.n_columns, len(COLUMN_FIELDS))
            counts = buf[at : at + b].astype(np.int64)
            res.columns = np.split(table, np.cumsum(counts)[:-1])
            at += b
        stats = (buf[at:] if self.tail is None else self.tail.numpy()).reshape(-1, b)
        res.level, res.blank = stats[0], stats[1] > 0
        if self.has_likelihood:
            res.vacuum, res.measured_vacuum, res.scored_vacuum = stats[2], stats[3], stats[4]
            res.evidence_frames = stats[5].astype(np.int64)
            res.evidence_left_out = stats[6].astype(np.int64)
            res.vacuum_not_flat = stats[7] > 0
        return res


class _Joined:
    """The parts of a batch read as the one flat buffer ``unpack`` cuts up: each slice ``unpack`` takes
    lies within one part, so it is a view of that part (no copy)."""

    def __init__(self, parts: list[np.ndarray]) -> None:
        self.parts = parts
        self.starts = np.cumsum([0, *(p.size for p in parts)])

    def __getitem__(self, cut: slice) -> np.ndarray:
        start = cut.start or 0
        i = int(np.searchsorted(self.starts, start, side="right")) - 1
        part, lo = self.parts[min(i, len(self.parts) - 1)], int(self.starts[min(i, len(self.parts) - 1)])
        stop = lo + part.size if cut.stop is None else cut.stop
        if stop - start <= 0:
            return part[:0]
        if stop > lo + part.size:
            raise ValueError(f"a cut {start}:{stop} across parts of sizes {[p.size for p in self.parts]}")
        return part[start - lo : stop - lo]
