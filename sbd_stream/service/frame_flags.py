"""Frames the batch stage finds unusual: marked in their outputs' meta and warned about once per acquisition.

Why here (``BatchStage.process`` calls ``FrameFlags.apply``): every path goes through the batch stage (the
live service, ``sbd-stream denoise``, the Python API ``service/frames.py``), and each of these frames
came out wrong without a word (audit 24):

* **Blank** (no beam: the frame's mean under ``BLANK_FRACTION`` of the configured dose *and* under
  ``BLANK_MAX_COUNTS`` counts per detector pixel, ``blank_below``): a blanked frame
  came out as an invented image (0.14-0.28 counts/px, 275-344 "columns"), and the dose check advised
  "restart with --counts-per-px 6.25e-08". Its denoised output is now zeros, it has no columns and an
  all-zero map (``BatchStage``), and ``meta.blank`` is true.
* **Vacuum not flat** (``vacuum_mode = estimate``): the blocks taken as vacuum do not look like vacuum
  (``compute/vacuum.py``), so the level may be ~20 % off and the LLR's sign with it; ``meta.vacuum_not_flat``
  (the dose check still counts such a frame: a level far outside its band is no estimator bias). The
  warning names the cause by the frame's level: inside ``DOSE_BAND`` of the configured dose, too little
  vacuum; outside it, the dose (the engine's ranking of the blocks is only sound at its dose; audit 24
  saw "too little vacuum" said of a 0.6x frame with half of it vacuum).
* **Fixed level off** (``vacuum_mode = fixed``): where a frame's own estimate is reliable (its blocks are
  flat), it differs from the fixed level by more than ``FIXED_BAND``; a level 20 % off reverses the LLR's
  verdict, and nothing said so below the start-up warning's 3x. Flat vacuum's estimate is within ~2 %,
  so the window is ``FIXED_BAND`` (0.9-1.1x), tighter than the dose check's.

The service counts them in metrics (``service/dose_check.py``); the warnings name the acquisition and
frame and say what to do. Bounded: at most ``Recent``'s acquisitions remembered per kind.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import numpy as np

from sbd_stream.compute.evidence import DOSE_BAND
from sbd_stream.sinks.record_item import Recent

log = logging.getLogger(__name__)

FIXED_BAND = (0.9, 1.1)
"""A frame's own level on flat vacuum (within ~2 % of the truth, measured) outside this factor of the fixed
level: the fixed level is off by more than the LLR's sign stands (docs/likelihood.md: a level 20 % off
reverses it, 10 % already shifts it). Tighter than ``DOSE_BAND``: 0.54 against 0.45 is 0.83x, inside it."""

BLANK_FRACTION = 0.02
"""A frame whose mean count is under 2 % of the configured dose has no beam: with beam, even a thick
specimen passes far more, and a 0.05 counts/px frame in a 0.45 stream (11 %) is a dose mismatch, not a
blank. Poisson cannot fake it: 2 % of 0.45 counts/px over 64 x 64 pixels is 37 counts against 1843."""

BLANK_MAX_COUNTS = 0.01
"""... and whose mean is under this many counts per detector pixel (45x below the paper's 0.45). Without
it a dose configured more than 50x too high (a dose rate per second entered as per frame) made every
frame "blank": all-zero outputs, and no dose advice (audit 24). Such a frame (0.45 counts/px against a
configured 45) is now denoised and the dose check says "restart with --counts-per-px 0.45"."""


def blank_below(configured: float, px: float = 1.0) -> float:
    """The mean count under which a frame is blank, in the unit of ``configured`` (counts per working
    pixel of ``px`` detector pixels): the smaller of ``BLANK_FRACTION`` of it and ``BLANK_MAX_COUNTS``."""
    return min(BLANK_FRACTION * configured, BLANK_MAX_COUNTS * px)


BLANK_DATASET = "blank_frames"
"""The per-frame flag of an offline output (``sbd-stream denoise``, ``replay --offline``): the service has
``meta.blank``, the Python API ``res.blank``; without it a blank frame there showed only as zeros."""


def blank_dataset(f: Any, n: int) -> Any:
    """The output's (n,) bool ``/blank_frames`` (h5py file ``f``), created unless there (a resumed job)."""
    ds = f.require_dataset(BLANK_DATASET, shape=(n,), dtype=bool, fillvalue=False)
    ds.attrs["description"] = (
        "True for a frame without beam (mean under 2 % of the configured dose and under 0.01 counts per "
        "detector pixel): its denoised frame is all zeros (docs/likelihood.md, Blank frames)"
    )
    return ds


def fixed_mismatch(res: Any, fixed: float | None) -> np.ndarray:
    """(B,) bool: frames whose own reliable vacuum estimate left ``FIXED_BAND`` of the fixed level."""
    if fixed is None or res.measured_vacuum is None or res.blank is None or res.vacuum_not_flat is None:
        return np.zeros(len(res), bool)
    lo, hi = FIXED_BAND
    ratio = np.asarray(res.measured_vacuum, np.float64) / fixed
    reliable = np.isfinite(ratio) & ~res.blank & ~res.vacuum_not_flat
    return reliable & ((ratio < lo) | (ratio > hi))


class FrameFlags:
    """Marks blank / doubtful frames in a result's headers and warns once per acquisition and kind."""

    def __init__(self, configured: float, fixed: float | None = None) -> None:
        """``configured``: the stream's dose, counts per detector pixel; ``fixed``: the likelihood's
        fixed vacuum level in the same unit (``vacuum_mode = fixed``), else None."""
        self.configured, self.fixed = configured, fixed
        self._warned: dict[str, Recent] = {"blank": Recent(), "not_flat": Recent(), "fixed": Recent()}

    def apply(self, res: Any) -> None:
        """Add ``blank`` / ``vacuum_not_flat`` to the meta of the frames concerned, and warn.

        ``res``: a ``service/batch.py`` ``BatchResult`` (not imported: batch imports this module)."""
        n = len(res)
        blank = res.blank if res.blank is not None else np.zeros(n, bool)
        not_flat = np.zeros(n, bool)
        if res.vacuum_not_flat is not None and self.fixed is None:
            not_flat = res.vacuum_not_flat
        off = fixed_mismatch(res, self.fixed)
        for i in np.flatnonzero(blank | not_flat | off):
            h = res.headers[i]
            add = {"blank": True} if blank[i] else {"vacuum_not_flat": True} if not_flat[i] else {}
            if add:
                res.headers[i] = dataclasses.replace(h, meta={**h.meta, **add})
            level = float(res.level[i]) if res.level is not None else math.nan
            if blank[i]:
                self._once("blank", h.acq, _BLANK, h.acq, h.seq, level, self.configured)
            elif not_flat[i]:
                vac = _at(res.vacuum, i)
                ratio = vac / self.configured if self.configured > 0 else math.nan
                if DOSE_BAND[0] <= ratio <= DOSE_BAND[1]:
                    self._once("not_flat", h.acq, _NOT_FLAT, h.acq, h.seq, vac)
                else:  # the engine works at the configured dose: off it, it may take specimen as vacuum
                    self._once("not_flat", h.acq, _NOT_FLAT_DOSE, h.acq, h.seq, vac, ratio, self.configured)
            else:
                measured = _at(res.measured_vacuum, i)
                self._once("fixed", h.acq, _FIXED, h.acq, h.seq, measured, measured / (self.fixed or 1.0),
                           self.fixed, FIXED_BAND[0], FIXED_BAND[1], measured)  # fmt: skip

    def _once(self, kind: str, acq: str, msg: str, *args: object) -> None:
        if acq not in self._warned[kind]:
            self._warned[kind][acq] = True
            log.warning(msg, *args)


def _at(values: np.ndarray | None, i: int | np.integer) -> float:
    return math.nan if values is None else float(values[i])


_BLANK = (
    "acquisition %s frame %d: mean %.3g counts per detector pixel, under 2%% of the configured %.3g and "
    "under 0.01: beam blanked? Output as a blank frame (denoised all zeros, no columns), flagged (service: "
    "meta.blank, sbd_blank_frames_total; denoise: /blank_frames; Python API: res.blank) and never used as "
    "evidence. Logged once per acquisition"
)
_NOT_FLAT = (
    "acquisition %s frame %d: the blocks taken as vacuum (level %.3g counts per detector pixel) are not "
    "flat at the Poisson level: too little vacuum in the frame (the estimator needs 10%% of whole 5 A "
    "blocks), so the level may be ~20%% off and the LLR's sign with it (docs/likelihood.md). Marked "
    "vacuum_not_flat (service: meta.vacuum_not_flat, sbd_vacuum_not_flat_frames_total; Python API: "
    "res.vacuum_not_flat); for frames without vacuum use "
    "vacuum_mode = 'fixed'. Logged once per acquisition"
)
_NOT_FLAT_DOSE = (
    "acquisition %s frame %d: the blocks taken as vacuum (level %.3g counts per detector pixel, %.2fx the "
    "configured %.3g) are not flat at the Poisson level: the engine denoises at the configured dose, and "
    "off it the blocks it leaves flattest can be specimen, so the level may be off and the LLR's sign with "
    "it (docs/likelihood.md). Marked vacuum_not_flat (service: meta.vacuum_not_flat, "
    "sbd_vacuum_not_flat_frames_total; Python API: res.vacuum_not_flat); set the dose the frames have "
    "(the dose check says which). Logged once per acquisition"
)
_FIXED = (
    "acquisition %s frame %d: its own vacuum level %.3g counts per detector pixel (measured on flat "
    "vacuum) is %.2fx the fixed likelihood vacuum_counts %.3g (outside %.2f-%.2fx): LLR signs are not "
    "reliable (a level 20%% off reverses them; docs/likelihood.md). Set vacuum_counts = %.3g or use "
    "vacuum_mode = 'estimate'. Counted in sbd_fixed_vacuum_mismatch_frames_total; logged once per "
    "acquisition"
)
