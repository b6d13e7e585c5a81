"""Denoising frames from Python: what ``sbd-stream denoise`` does to each frame, arrays in, arrays out.

Why: the one class the docs named, ``Denoiser`` (engines/denoiser.py), works at the engine's working
pixel in counts per working pixel. A notebook that handed it detector frames (0.060 A, 0.45 counts/px)
got a 10x too bright image, worse than the raw frame (5.1 dB on the paper's metric against the batch
stage's 34.4 dB), without a word; one NaN pixel made a ~200 px disc of NaN. Here frames are stated in
the detector's units, as every command takes them, and take the command's path: unusable pixels
replaced as at the service edge (``service/edge.py``), then the batch stage (``service/batch.py``:
binned to the working pixel, denoised, averaged over orientations, bicubic back to detector pixels),
in the command's batches. So the output equals ``sbd-stream denoise``'s for the same frames and
settings (``tests/unit/test_library_api.py`` compares them).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

import numpy as np
import torch
from pydantic import BaseModel, ValidationError

from sbd_stream.compute.binning import DEFAULT_TOLERANCE, SamplingError
from sbd_stream.config import DenoiseSettings, DetectorSettings, LikelihoodSettings, Upsample
from sbd_stream.engines.card import load_card, offline_engine, resolve_engine_dir
from sbd_stream.engines.denoiser import Denoiser
from sbd_stream.frames import Frame, FrameHeader
from sbd_stream.service.batch import BatchStage, dose_warning, plan_geometry
from sbd_stream.service.edge import EdgeTally, clean_pixels, hot_threshold, negative_pixels, report_values
from sbd_stream.service.edge import replaced as replaced_in
from sbd_stream.service.offline import offline_upsample
from sbd_stream.service.offline_dose import PYTHON, dose_verdict, measured_vacuum, warn_mismatch
from sbd_stream.sources.stack_headers import check_dtype

__all__ = ["DenoisedFrames", "FrameDenoiser", "SamplingError", "denoise_frames"]
"""``SamplingError`` (``compute/binning.py``, a ``ValueError``) is re-exported: what a pixel size the engine
cannot bin to raises, importable from where the docs' examples import."""

log = logging.getLogger(__name__)

S = TypeVar("S", bound=BaseModel)

ACQ = "frames"
"""The acquisition name the frames' internal headers carry (no wire, no recording sees it)."""


@dataclass
class DenoisedFrames:
    """What ``FrameDenoiser.process`` returns; frames at the detector's sampling, shaped as given."""

    denoised: np.ndarray  # float32 counts per detector pixel, (H, W) or (N, H, W) as the input
    replaced: np.ndarray  # (N,) pixels per frame replaced by the frame's mean (NaN / Inf, dtype maximum, hot)
    negative_pixels: int  # input pixels below zero: not counts, passed on as they are
    likelihood: np.ndarray | None = None  # float32 LLR map like ``denoised`` (likelihood on)
    columns: list[np.ndarray] | None = None  # per frame (K, 4): row, col (detector px), LLR, column rate
    vacuum: np.ndarray | None = None  # (N,) vacuum level, counts per detector pixel
    blank: np.ndarray | None = None  # (N,) bool: no beam (mean under 2 % of the dose): zeros, no columns
    vacuum_not_flat: np.ndarray | None = None  # (N,) bool: the blocks taken as vacuum were not flat
    evidence_frames: np.ndarray | None = None  # (N,) other frames whose counts scored the columns (0: own)
    measured_vacuum: np.ndarray | None = None  # (N,) float32 own vacuum level, counts/px (NaN: no vacuum)


class FrameDenoiser:
    """An engine loaded once for frames of one detector sampling; call it on (H, W) or (N, H, W) frames.

    ``pixel_size_A``: the detector's pixel at the specimen; the dose as ``counts_per_px`` (vacuum counts
    per detector pixel per frame) or ``dose_e_per_A2`` (the paper's 125 e/A^2 = 0.45 counts per 0.060 A
    pixel, with a warning, when neither is given). ``model``: engine name or path (default: the one
    ``sbd-stream denoise`` picks), ``engine``: the backend (auto, tensorrt, onnxruntime, torch);
    ``orientations`` 8 as ``sbd-stream denoise`` (1: the live lane, 8x less engine time); ``likelihood``
    True (or ``LikelihoodSettings``) adds the service's likelihood maps and column tables. The other
    keywords are the ``[denoise]`` settings of the same names. A detector pixel that no integer bin
    serves is resampled by area to the working pixel (compute/resample.py, logged once); one coarser
    than the working pixel is a ``ValueError`` naming both pixel sizes; so is any other invalid value.
    """

    def __init__(
        self,
        pixel_size_A: float,
        *,
        counts_per_px: float | None = None,
        dose_e_per_A2: float | None = None,
        model: str | Path | None = None,
        engine: str = "auto",
        device: str | None = None,
        orientations: Literal[1, 2, 4, 8] = 8,
        likelihood: bool | LikelihoodSettings = False,
        upsample: Upsample | str = Upsample.auto,
        batch_frames: int = 4,
        tile: int | None = None,
        margin: int | None = None,
        bin_tolerance: float = DEFAULT_TOLERANCE,
        denoiser: Denoiser | None = None,
    ) -> None:
        """``denoiser``: an already loaded one to use (``model`` / ``engine`` / ``device`` / ``tile`` /
        ``margin`` are then its own)."""
        self.detector = settings(
            DetectorSettings,
            pixel_size_A=pixel_size_A,
            counts_per_px=counts_per_px,
            dose_e_per_A2=dose_e_per_A2,
        )
        if counts_per_px is None and dose_e_per_A2 is None:
            log.warning(
                "no dose given (counts_per_px= or dose_e_per_A2=): taking the paper's 125 e/A^2 per frame, "
                "%.4g counts per %.4g A pixel",
                self.detector.vacuum_counts, pixel_size_A,
            )  # fmt: skip
        lik = likelihood_settings(likelihood)
        self.settings = settings(
            DenoiseSettings,
            engine=engine,
            model=None if model is None else str(model),
            device=device,
            orientations=orientations,
            likelihood=lik,
            upsample=upsample,
            batch_frames=batch_frames,
            tile=tile,
            margin=margin,
            bin_tolerance=bin_tolerance,
        )
        d = self.settings
        if denoiser is None:  # as denoise_file loads it, with the engine sbd-stream denoise picks
            model = d.model or offline_engine()
            card = load_card(resolve_engine_dir(model))
            if card.pixel_size_A is not None:  # a sampling it cannot serve is refused before the load
                plan_geometry(self.detector, card, d.bin_tolerance)
            denoiser = Denoiser.load(d.engine, model, d.device, tile=d.tile, margin=d.margin)
        self.stage = BatchStage(
            denoiser,
            self.detector,
            likelihood=d.likelihood,
            bin_tolerance=d.bin_tolerance,
            upsample=offline_upsample(d),
            orientations=d.orientations,
        )
        g = self.stage.geometry
        if not g.dose_in_range:
            log.warning("%s", dose_warning(g.detector.dose_per_area, g.dose_factor, g.dose_range))
        self._dose_warned = False  # the measured-dose warning: once per denoiser, not per call (a loop)

    @property
    def denoiser(self) -> Denoiser:
        return self.stage.denoiser

    def describe(self) -> dict[str, Any]:
        """The sampling as ``sbd-stream denoise`` writes it in its output's attributes (bin, doses, ...)."""
        g = self.stage.geometry
        return {
            "engine_id": self.denoiser.engine_id,
            **g.describe(),
            "orientations": self.stage.orientations,
            "dose_range": list(g.dose_range),
            "dose_in_range": bool(g.dose_in_range),
        }

    def __call__(self, frames: np.ndarray | torch.Tensor) -> np.ndarray:
        """Denoised float32 counts per detector pixel, shaped as ``frames``."""
        return self.process(frames).denoised

    def process(self, frames: np.ndarray | torch.Tensor) -> DenoisedFrames:
        """``frames`` (H, W) or (N, H, W) counts per detector pixel, numpy (a memmap too) or torch.

        One call is one acquisition: with likelihood evidence frames on, frame ``i`` is scored on frames
        ``i - N ... i - 1`` of the same call (docs/likelihood.md), never on another call's.
        """
        stack, single = as_stack(frames)
        n, h, w = stack.shape
        denoised = np.empty((n, h, w), np.float32)
        replaced = np.zeros(n, np.int64)
        lik = self.stage.likelihood is not None
        maps = np.empty((n, h, w), np.float32) if lik else None
        columns: list[np.ndarray] = []
        vacuum = np.empty(n, np.float32) if lik else None
        blank = np.zeros(n, bool)
        measured = np.full(n, np.nan, np.float32)  # against the stated dose (``offline_dose.py``)
        not_flat = np.zeros(n, bool) if lik else None
        evidence = np.zeros(n, np.int64) if lik else None  # the llr header's meta.evidence_frames
        negative = 0
        batch, keep = self.settings.batch_frames, self.stage.evidence_frames
        earlier: list[Frame] = []  # evidence frames on: the frames before a batch may score it
        tally = EdgeTally(dose := self.stage.geometry.detector.vacuum_counts)  # the hot-pixel rule's dose
        for a in range(0, n, batch):
            part = np.asarray(stack[a : a + batch])  # a memmap is read a batch at a time
            frs = []
            for i, fr in enumerate(part):
                clean, meta = clean_pixels(fr, hot_threshold(dose))
                tally.add(a + i, meta)
                frs.append(Frame(FrameHeader(ACQ, a + i, 0.0, (h, w), str(fr.dtype), meta=meta), clean))
                replaced[a + i] = replaced_in(frs[-1])
            negative += negative_pixels(part)
            res = self.stage.process(frs, earlier)
            earlier = [*earlier, *frs][-keep:] if keep else []
            denoised[a : a + len(part)] = res.denoised
            if res.blank is not None:
                blank[a : a + len(part)] = res.blank
            raw = np.stack([np.asarray(f.data) for f in frs])  # as denoised: replaced pixels
            g = self.stage.geometry
            measured[a : a + len(part)] = measured_vacuum(g, raw, res.denoised, blank[a : a + len(part)])
            if not_flat is not None and res.vacuum_not_flat is not None:
                not_flat[a : a + len(part)] = res.vacuum_not_flat
            if evidence is not None and res.evidence_frames is not None:
                evidence[a : a + len(part)] = res.evidence_frames
            if maps is not None and vacuum is not None and res.likelihood is not None:
                maps[a : a + len(part)] = res.likelihood
                vacuum[a : a + len(part)] = res.vacuum
                columns += res.columns or []
        report_values(replaced, negative, "the result's .replaced", tally)
        det = self.stage.geometry.detector
        verdict = dose_verdict(measured, det)
        if not self._dose_warned:  # a loop of one-frame calls: said once; each result still has its levels
            warn_mismatch(verdict, measured, det, PYTHON)
            self._dose_warned = bool(verdict["dose_mismatch"])
        out = DenoisedFrames(denoised[0] if single else denoised, replaced, negative, blank=blank)
        out.measured_vacuum = measured
        if maps is not None:
            out.likelihood, out.columns, out.vacuum = (maps[0] if single else maps), columns, vacuum
            out.vacuum_not_flat, out.evidence_frames = not_flat, evidence
        return out


@overload
def denoise_frames(
    frames: np.ndarray | torch.Tensor, pixel_size_A: float, *, likelihood: Literal[False] = False, **kw: Any
) -> np.ndarray: ...
@overload
def denoise_frames(
    frames: np.ndarray | torch.Tensor, pixel_size_A: float, *, likelihood: Literal[True], **kw: Any
) -> tuple[np.ndarray, np.ndarray]: ...
@overload
def denoise_frames(
    frames: np.ndarray | torch.Tensor, pixel_size_A: float, *, likelihood: LikelihoodSettings, **kw: Any
) -> np.ndarray | tuple[np.ndarray, np.ndarray]: ...
def denoise_frames(
    frames: np.ndarray | torch.Tensor,
    pixel_size_A: float,
    *,
    likelihood: bool | LikelihoodSettings = False,
    **kw: Any,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Denoise detector frames once: float32 counts per detector pixel, shaped as ``frames``.

    ``frames``: (H, W) or (N, H, W) counts at the detector's sampling, numpy or torch. Keywords as
    ``FrameDenoiser`` (``counts_per_px`` or ``dose_e_per_A2``, ``model``, ``engine``, ``orientations``,
    ...). With ``likelihood=True``: (denoised, likelihood map). The engine is loaded on every call; for
    many calls keep a ``FrameDenoiser``. ``LikelihoodSettings`` turn it on unless they say ``enabled=False``.
    """
    res = FrameDenoiser(pixel_size_A, likelihood=likelihood, **kw).process(frames)
    if res.likelihood is not None:  # on: True, or settings not switched off (``likelihood_settings``)
        return res.denoised, res.likelihood
    return res.denoised


def likelihood_settings(likelihood: bool | LikelihoodSettings) -> LikelihoodSettings:
    """The likelihood settings a ``likelihood=`` argument asks for: settings given mean "on".

    Why: ``LikelihoodSettings.enabled`` defaults to False (the service's ``[denoise.likelihood]`` is
    off unless switched on), so ``likelihood=LikelihoodSettings(vacuum_mode="fixed", ...)``, the
    docs' own recipe (docs/likelihood.md), silently returned no maps, and ``denoise_frames`` failed
    with a bare ``AssertionError``. Settings that say ``enabled=False`` in so many words stay off.
    """
    if not isinstance(likelihood, LikelihoodSettings):
        return settings(LikelihoodSettings, enabled=bool(likelihood))
    if "enabled" in likelihood.model_fields_set:
        return likelihood
    return likelihood.model_copy(update={"enabled": True})


def settings(cls: type[S], **values: Any) -> S:
    """``cls(**values)``, a refused value as a one-line ``ValueError`` naming the keyword and its value.

    Why: pydantic's ``ValidationError`` (a ``ValueError`` too) printed four lines, the error type and a
    URL in a notebook for ``counts_per_px=-1``; the commands say it in one line, so does this.
    """
    try:
        return cls(**values)
    except ValidationError as e:
        parts = []
        for err in e.errors():
            name = ".".join(str(x) for x in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            parts.append(f"{name}={err['input']!r}: {msg}" if name else msg)
        raise ValueError("; ".join(parts)) from None


def as_stack(frames: np.ndarray | torch.Tensor) -> tuple[np.ndarray, bool]:
    """(N, H, W) frames on the host and whether one (H, W) frame was given; ``ValueError`` if unusable."""
    if isinstance(frames, torch.Tensor):
        t = frames.detach()
        frames = (t.float() if t.dtype == torch.bfloat16 else t).cpu().numpy()
    if isinstance(frames, list | tuple) and len({tuple(np.shape(f)) for f in frames}) > 1:
        shapes = sorted({tuple(np.shape(f)) for f in frames})
        raise ValueError(
            f"frames of different shapes {shapes[:4]}: one call takes (H, W) or (N, H, W) frames of one "
            "shape; call once per shape (a FrameDenoiser keeps the engine loaded between calls)"
        )
    a = frames if isinstance(frames, np.ndarray) else np.asarray(frames)
    check_dtype(a.dtype)
    if a.ndim not in (2, 3):
        raise ValueError(f"expected (H, W) or (N, H, W) frames, got shape {a.shape}")
    if 0 in a.shape:
        raise ValueError(f"no pixels in frames of shape {a.shape}")
    return (a[None], True) if a.ndim == 2 else (a, False)
