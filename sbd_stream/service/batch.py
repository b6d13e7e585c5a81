"""The batch stage: a list of raw detector frames in, denoised frames + likelihood maps + columns out.

A function of its inputs (no threads, no sockets, no state), so it is tested and benchmarked on its own
and the pipeline around it is wiring only. With likelihood evidence frames (``compute/evidence.py``)
each frame's evidence is handed in with it (``service/evidence_history.py`` decides it at receipt, for
every worker and both lanes), and a frame is only ever scored on frames *before* it in sequence, never
on later batch-mates, so a map depends neither on the batch, the lane or the worker. On the
device it bins detector pixels to the engine's working pixel (summing counts), denoises there
(normalise -> tile -> engine -> fuse), scores columns with the Poisson likelihood ratio on the binned
raw counts, and interpolates the results back to the detector's sampling. The batch crosses the
host-device boundary exactly twice: one upload of the stacked raw frames, one download of everything
the sinks need packed into a single buffer. On a GPU each extra transfer is a synchronisation, and
per-frame downloads were what made the likelihood stage cost more than the network. With evidence
frames a frame binned before is not uploaded or binned again (``service/binned_cache.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sbd_stream.compute.binning import (
    DEFAULT_TOLERANCE,
    bin_counts,
    is_fractional,
    sampling_factor,
    to_detector_coords,
    unbin,
    unbin_nearest,
)
from sbd_stream.compute.evidence import evidence_counts, own_frame_config
from sbd_stream.compute.likelihood import LikelihoodStage, VacuumMode
from sbd_stream.compute.scoring import score_frames
from sbd_stream.config import DetectorSettings, LikelihoodSettings, Upsample
from sbd_stream.engines.card import EngineCard
from sbd_stream.engines.denoiser import Denoiser
from sbd_stream.engines.symmetry import describe, ensemble, symmetrised, trained_orientations
from sbd_stream.engines.symmetry import orientations as orientations_of
from sbd_stream.frames import Frame
from sbd_stream.service.batch_result import BatchResult, PackedBatch
from sbd_stream.service.binned_cache import BinnedCache
from sbd_stream.service.frame_flags import FrameFlags, blank_below

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Geometry:
    """How this stream's detector frames map onto the engine: bin factor and dose in both samplings.

    ``bin``: the integer k of a k x k bin, or the float r = working / detector pixel where no integer
    bin lies within tolerance (area-weighted resampling, ``compute/resample.py``); r^2 detector pixels
    make a working pixel either way, so every dose below is ``bin ** 2`` times the detector's.
    """

    detector: DetectorSettings
    bin: int | float
    working_pixel_A: float
    vacuum_counts: float  # expected counts per *working* pixel in vacuum: the normalisation's dose
    dose_factor: float  # this stream's dose / the engine's nominal dose (per area)
    dose_range: tuple[float, float]  # the factors the engine was trained over

    @property
    def dose_in_range(self) -> bool:
        lo, hi = self.dose_range
        return lo / DOSE_SLACK <= self.dose_factor <= hi * DOSE_SLACK

    def describe(self) -> dict[str, float | int]:
        return {
            **self.detector.describe(),
            "bin": self.bin,
            "working_pixel_A": self.working_pixel_A,
            "working_vacuum_counts": self.vacuum_counts,
            "dose_factor": self.dose_factor,
        }


DOSE_SLACK = 1.25
"""A dose within the trained range widened by this factor is not worth a warning."""


def dose_warning(dose_per_area: float, factor: float, dose_range: tuple[float, float] | list[float]) -> str:
    """The one warning for a dose outside an engine's trained range (live and offline say the same)."""
    lo, hi = dose_range
    return (
        f"dose {dose_per_area:.4g} e/A^2 per frame is {factor:.2f}x the engine's nominal dose, outside "
        f"its trained range {lo:.2f}-{hi:.2f}x: expect degraded denoising"
    )


def plan_geometry(
    detector: DetectorSettings, card: EngineCard, tolerance: float = DEFAULT_TOLERANCE
) -> Geometry:
    """Bin factor and doses for ``detector`` on an engine; raises ``SamplingError`` if it cannot serve it.

    Cards without a working pixel (engines made before pixel sizes were recorded) are taken to work at
    the detector's own pixel: no binning, and the detector's counts per pixel as the dose.
    """
    if card.pixel_size_A is None:
        log.warning(
            "engine %s states no working pixel size: frames are denoised at the detector's %.4g A",
            card.name,
            detector.pixel_size_A,
        )
        return Geometry(detector, 1, detector.pixel_size_A, detector.vacuum_counts, 1.0, card.dose_range)
    k = sampling_factor(detector.pixel_size_A, card.pixel_size_A, tolerance)
    if is_fractional(k):
        say_resampled(detector.pixel_size_A, card.pixel_size_A, float(k), tolerance)
    vacuum_working = detector.vacuum_counts * k * k
    # the pixel the engine really sees: within the tolerance of its card's (5 x 0.05 A = 0.25 A for a
    # 0.24 A engine), stated as it is (audit h36: the card's was recorded); 6 digits, not 0.24000000000000002
    working = float(f"{detector.pixel_size_A * k:.6g}")
    return Geometry(
        detector,
        k,
        working,
        vacuum_working,
        vacuum_working / card.normalisation.dose,
        card.dose_range,
    )


_SAID: set[tuple[float, float, float]] = set()


def say_resampled(detector_pixel_A: float, working_pixel_A: float, r: float, tolerance: float) -> None:
    """One INFO line per sampling and process (every worker plans its own geometry): a fractional factor
    is served, not refused, but it is not the exactly-Poisson integer bin, so say so."""
    key = (detector_pixel_A, working_pixel_A, tolerance)
    if key in _SAID:
        return
    _SAID.add(key)
    log.info(
        "detector pixel %.4g A is served by area-weighted resampling by %.4g to the engine's %.4g A working "
        "pixel (no integer bin within %.0f %%)",
        detector_pixel_A, r, working_pixel_A, 100 * tolerance,
    )  # fmt: skip


class BatchStage:
    """Holds the loaded denoiser, the stream's geometry and the likelihood kernels; ``process`` is pure."""

    def __init__(
        self,
        denoiser: Denoiser,
        detector: DetectorSettings | None = None,
        likelihood: LikelihoodSettings | None = None,
        bin_tolerance: float = DEFAULT_TOLERANCE,
        upsample: Upsample | str = Upsample.auto,
        orientations: int = 1,
    ) -> None:
        """``orientations``: 1 (live), or 2 / 4 / 8 to average the engine over turned copies of each frame
        (``engines/symmetry.py``: exactly orientation-equivariant, one engine call per orientation), over
        only those the engine's card says it was trained in (``ensemble``: a flips-only engine gets its 4
        flips for 4 or 8). ``orientation_set`` is what is used, ``orientations`` its count."""
        orientations_of(orientations)  # refuse an unknown count here, not on the first frame
        training = denoiser.engine.card.training
        self.orientation_set = ensemble(orientations, training)
        self.orientations = len(self.orientation_set)
        if self.orientations < orientations:
            log.warning(
                "engine %s was trained in %d orientation(s): averaging over %s instead of %d",
                denoiser.engine.card.name,
                trained_orientations(training),
                describe(self.orientation_set),
                orientations,
            )
        self.denoiser = denoiser
        up = Upsample(upsample)
        if up is Upsample.auto:
            up = Upsample.bilinear if denoiser.device.type == "cpu" else Upsample.bicubic
        self.upsample = up.value
        self.geometry = plan_geometry(detector or DetectorSettings(), denoiser.engine.card, bin_tolerance)
        self.likelihood: LikelihoodStage | None = None
        self.own_likelihood: LikelihoodStage | None = None  # frames without evidence, if scored otherwise
        self.evidence_frames = 0
        self._warned_small: set[tuple[int, int]] = set()
        fixed_level = None
        if likelihood is not None and likelihood.enabled:
            self.likelihood = LikelihoodStage(likelihood.at_pixel(self.geometry.working_pixel_A), self.device)
            self.evidence_frames = likelihood.evidence_frames
            own = own_frame_config(self.likelihood.cfg) if self.evidence_frames else None
            self.own_likelihood = None if own is None else LikelihoodStage(own, self.device)
            if likelihood.vacuum_mode is VacuumMode.fixed:
                fixed_level = likelihood.vacuum_counts
            fixed, stream = likelihood.vacuum_counts, self.geometry.detector.vacuum_counts
            if likelihood.vacuum_mode is VacuumMode.fixed and fixed and not 1 / 3 < fixed / stream < 3:
                log.warning(
                    "likelihood vacuum_counts %.4g is %.1fx the stream's %.4g counts per detector pixel: "
                    "it is in counts per detector pixel of one frame (not per working pixel)",
                    fixed, fixed / stream, stream,
                )  # fmt: skip
        self.flags = FrameFlags(self.geometry.detector.vacuum_counts, fixed_level)
        self.binned = BinnedCache(self.evidence_frames)  # each frame is the next N frames' evidence

    @property
    def device(self) -> torch.device:
        return self.denoiser.device

    def _small_frames(self, shape: tuple[int, int], working: tuple[int, ...]) -> None:
        """Say once per frame shape that its frames get no columns (they are still denoised)."""
        if shape not in self._warned_small:
            self._warned_small.add(shape)
            assert self.likelihood is not None
            log.warning(
                "frames of %dx%d detector pixels (%dx%d working pixels) are too small to find atomic columns "
                "in (at least %d working pixels a side): denoised and published with an empty likelihood map",
                *shape,
                *working,
                self.likelihood.min_side(),
            )

    def upload(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        """The one host -> device copy of a batch (stacked on the host, sent as one buffer)."""
        stacked = np.stack(frames) if len(frames) > 1 else np.asarray(frames[0])[None]
        if not stacked.dtype.isnative:  # big-endian TIFF / NPY / MRC / HDF5: torch takes native order only
            stacked = stacked.astype(stacked.dtype.newbyteorder("="))  # np.stack of 2+ did; 1 frame failed
        if stacked.dtype.kind not in "fiu" or stacked.dtype == np.uint64:
            stacked = stacked.astype(np.float32)
        elif stacked.dtype == np.uint16 and self.device.type == "cpu":  # binned as float32 anyway:
            stacked = stacked.astype(np.float32)  # numpy's cast, ~2x torch's on a K2 frame (its allocation)
        elif stacked.dtype == np.uint32:  # torch has no uint32 arithmetic on every device
            stacked = stacked.astype(np.int64)
        if not stacked.flags.writeable:  # a view of a received ZeroMQ buffer: torch wants its own
            stacked = stacked.copy()
        return torch.from_numpy(np.ascontiguousarray(stacked)).to(self.device, non_blocking=True)

    @staticmethod
    def pack_on_device(device: torch.device) -> bool:
        """Whether a batch's results are packed into one buffer before they leave the device: on a GPU
        each transfer is a copy and a synchronisation; on the CPU they are already on the host, and
        packing copied the denoised frames and the map (52 ms of a K2 frame, 2.4 ms of a 1024^2 one)."""
        return device.type != "cpu"

    @staticmethod
    def download(packed: torch.Tensor | list[torch.Tensor]) -> np.ndarray | list[np.ndarray]:
        """The one device -> host copy of a batch (on the CPU, its parts as they are: no copy)."""
        if isinstance(packed, list):
            return [p.detach().numpy() for p in packed]
        return packed.detach().to("cpu").numpy()

    @torch.no_grad()
    def process(
        self,
        frames: Sequence[Frame],
        earlier: Sequence[Frame] = (),
        evidence: Sequence[Sequence[Frame]] | None = None,
    ) -> BatchResult:
        """Denoise (and score) frames of one shape; outputs at the detector's sampling, in counts.

        With evidence frames on, frame ``seq`` is scored on the frames ``seq - N ... seq - 1`` of its
        acquisition that it is handed (none: its own counts), never on later ones, so its map does not
        depend on its batch. ``evidence``: per frame, exactly those frames (the service's, decided at
        receipt by ``EvidenceHistory.keep``); without it they are looked up by (acq, seq) among
        ``earlier`` and the batch. Evidence frames are uploaded with the batch (still one copy) and
        scored, never denoised; a frame that is also in the batch is uploaded once, and one binned in an
        earlier batch (read-only, as the service's frames) not again (``BinnedCache``).
        """
        if not frames:
            raise ValueError("an empty batch")
        shape = frames[0].data.shape
        if any(f.data.shape != shape for f in frames) or len(shape) != 2:
            raise ValueError(f"a batch needs 2-D frames of one shape, got {[f.data.shape for f in frames]}")
        rows: list[Frame] = []
        plan: list[list[int]] | None = None
        if self.evidence_frames:
            per = evidence if evidence is not None else earlier_frames(frames, earlier, self.evidence_frames)
            rows, plan = evidence_rows(frames, per, shape)
        t0 = time.perf_counter()
        every, k = [f.data for f in (*rows, *frames)], self.geometry.bin
        pool, t_bin = self.binned.counts(every, len(frames), self.upload, lambda r: bin_counts(r, k))
        out = self._process_binned(pool, shape, plan, len(rows), t_bin)
        t1 = time.perf_counter()
        host = self.download(out.packed)
        result = out.unpack(host, [f.header for f in frames], [f.t_recv for f in frames])
        result.timings = {"batch": t1 - t0, "download": time.perf_counter() - t1, **out.timings}
        self.flags.apply(result)
        return result

    def _fixed_vacuum(self, scale: torch.Tensor) -> torch.Tensor | None:
        """``vacuum_mode = fixed``: the level for what is scored, else None (the stage estimates it).

        ``vacuum_counts`` is stated as every other dose here, in counts per *detector* pixel of one
        frame; the columns are scored on working pixels (``bin^2`` detector pixels) and, with evidence
        frames, on a sum worth ``scale`` frames at the scored frame's dose (0: its own counts, 1).
        Compared as given, 7.2 (the card's working-pixel dose) against 4 summed frames scored vacuum as
        columns of LLR 260-1750.
        """
        cfg = self.likelihood.cfg if self.likelihood is not None else None
        if cfg is None or cfg.vacuum_mode is not VacuumMode.fixed:
            return None
        assert cfg.vacuum_counts is not None  # LikelihoodConfig refuses fixed without it
        k = self.geometry.bin
        scale = scale.to(torch.float32)
        return float(cfg.vacuum_counts) * k * k * torch.where(scale > 0, scale, torch.ones_like(scale))

    def process_tensor(
        self, raw: torch.Tensor, plan: list[list[int]] | None = None, earlier: int = 0
    ) -> PackedBatch:
        """Device part of ``process``: (E + B, H, W) raw counts on the device -> one packed device buffer.

        ``plan``: per batch frame, the rows of ``raw`` whose counts score it (``evidence_rows``; empty:
        its own counts); without it every frame is scored on its own counts. The first ``earlier`` rows
        are evidence only.
        """
        t0 = time.perf_counter()
        return self._process_binned(bin_counts(raw, self.geometry.bin), raw.shape[1:], plan, earlier, t0)

    def _process_binned(
        self, pool: torch.Tensor, shape: Sequence[int], plan: list[list[int]] | None, earlier: int, t0: float
    ) -> PackedBatch:
        """``process_tensor`` from the (E + B, h, w) working-pixel counts on (``t0``: binning began)."""
        g, (h, w) = self.geometry, shape
        b = pool.shape[0] - earlier
        binned = pool[earlier:]
        level = pool.mean(dim=(1, 2))  # (E + B,) mean count per working pixel: a static specimen's dose
        blank_rows = level < blank_below(g.vacuum_counts, g.bin * g.bin)  # per working pixel
        blank = blank_rows[earlier:]
        den_w = symmetrised(
            lambda t: self.denoiser.denoise(t, dose=g.vacuum_counts), binned, self.orientation_set
        )
        den_w = den_w.masked_fill(blank.view(-1, 1, 1), 0.0)  # no beam: zeros (no host sync to ask first)
        den = unbin(den_w, g.bin, (h, w), self.upsample)
        t1 = time.perf_counter()
        px = float(g.bin * g.bin)
        parts = [den.reshape(-1)]
        stats = [level[earlier:] / px, blank.to(torch.float32)]
        n_cols = 0
        if self.likelihood is not None and min(binned.shape[1:]) < self.likelihood.min_side():
            # too small to find columns in: denoised and published all the same, with an empty map and table
            self._small_frames((h, w), binned.shape[1:])
            zeros = torch.zeros(b, device=den.device)
            nan = torch.full((b,), float("nan"), device=den.device)
            parts += [torch.zeros(b * h * w, device=den.device), zeros[:0], zeros]
            # meta.vacuum_counts: no level estimated, NaN; a blank frame's is its mean (~0), as when scored
            shown = torch.where(blank, level[earlier:] / px, nan)
            stats += [shown, nan, zeros, zeros, zeros, zeros]
        elif self.likelihood is not None:
            n_cols = self._score(pool, den_w, (h, w), plan, earlier, level, blank_rows, parts, stats)
        stats_t = torch.stack(stats).reshape(-1)
        packed: torch.Tensor | list[torch.Tensor]  # a list: the parts apart (PackedBatch.packed)
        if self.pack_on_device(den.device):  # one download of a batch, not one per part
            packed, tail = torch.cat([p.to(torch.float32) for p in (*parts, stats_t)]), None
        else:  # the host has them: packing would only copy both frame-sized parts (~50 ms a K2 frame)
            packed, tail = [p.to(torch.float32) for p in parts], stats_t
        timings = {"denoise": t1 - t0}
        if self.likelihood is not None:
            timings["likelihood"] = time.perf_counter() - t1
        return PackedBatch(packed, (b, h, w), self.likelihood is not None, n_cols, timings, tail)

    def _score(
        self,
        pool: torch.Tensor,
        den_w: torch.Tensor,
        shape: tuple[int, int],
        plan: list[list[int]] | None,
        earlier: int,
        level: torch.Tensor,
        blank_rows: torch.Tensor,
        parts: list[torch.Tensor],
        stats: list[torch.Tensor],
    ) -> int:
        """Score the batch's columns; appends the map, table and counts to ``parts``, the per-frame
        levels to ``stats``; returns the number of columns (known on the host after ``nonzero``)."""
        assert self.likelihood is not None
        g, b, (h, w) = self.geometry, den_w.shape[0], shape
        binned, dev = pool[earlier:], den_w.device
        if plan is not None and self.evidence_frames:
            scored, scale, used, left = evidence_counts(pool, plan, earlier, level, blank_rows)
        else:
            scored, scale = binned, torch.ones(b, device=dev)
            used, left = torch.zeros(b, device=dev), torch.zeros(b, device=dev)
        fixed = self._fixed_vacuum(scale)
        rates = den_w * scale.view(-1, 1, 1)
        own_stage = self.own_likelihood
        cols = score_frames(self.likelihood, own_stage, scored, rates, binned, den_w, used > 0, fixed)
        # rates and levels back to one frame's worth per detector pixel (the LLR stays the sum scored)
        px = float(g.bin * g.bin)
        per = scale * px
        parts.append(unbin_nearest(cols.map, g.bin, (h, w)).reshape(-1))
        pos = to_detector_coords(cols.centres[:, 1:].to(torch.float32), g.bin, (h, w))
        lam1 = cols.lam1 / per[cols.centres[:, 0]]
        table = torch.stack([pos[:, 0], pos[:, 1], cols.llr, lam1], dim=1)
        parts += [table.reshape(-1), torch.bincount(cols.centres[:, 0], minlength=b)]
        blank = blank_rows[earlier:]
        own = torch.where(blank, level[earlier:], cols.own) / px  # a blank frame's level: its mean, ~0
        shown = own if fixed is None else fixed / per  # meta.vacuum_counts: the fixed level, as configured
        not_flat = cols.not_flat & ~blank
        stats += [shown, own, cols.lam0 / per, used, left, not_flat.to(torch.float32)]
        return int(table.shape[0])


def earlier_frames(frames: Sequence[Frame], earlier: Sequence[Frame], n: int) -> list[list[Frame]]:
    """Per frame of a batch, the frames ``seq - n ... seq - 1`` of its acquisition among ``earlier``
    and the batch, nearest first (of a sequence number given twice, the later one given)."""
    out = []
    for f in frames:
        h, got = f.header, {}
        for k in (*earlier, *frames):
            if k.header.acq == h.acq and 0 < h.seq - k.header.seq <= n:
                got[k.header.seq] = k
        out.append([got[q] for q in sorted(got, reverse=True)])
    return out


def evidence_rows(
    frames: Sequence[Frame], evidence: Sequence[Sequence[Frame]], shape: tuple[int, ...]
) -> tuple[list[Frame], list[list[int]]]:
    """(evidence-only rows to upload before the batch, per frame the rows that score it).

    A frame is matched by its array: an evidence frame whose array is a batch frame's (the history's
    copy of a batch-mate) scores from the batch's row, so nothing is uploaded twice. Evidence of
    another shape (never handed by the service) is left out.
    """
    if len(evidence) != len(frames):
        raise ValueError(f"evidence for {len(evidence)} frames, the batch has {len(frames)}")
    row = {id(f.data): j for j, f in enumerate(frames)}  # batch rows, placed after the evidence rows
    rows: list[Frame] = []
    for e in (e for ev in evidence for e in ev if e.data.shape == shape):
        if id(e.data) not in row:
            row[id(e.data)] = -1 - len(rows)  # an evidence-only row, numbered once all are known
            rows.append(e)
    at = {k: (-1 - v if v < 0 else len(rows) + v) for k, v in row.items()}
    return rows, [[at[id(e.data)] for e in ev if e.data.shape == shape] for ev in evidence]
