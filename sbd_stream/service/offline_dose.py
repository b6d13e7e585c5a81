"""The measured vacuum level against the stated dose, offline (``sbd-stream denoise``, ``replay --offline``,
the Python API's ``FrameDenoiser``).

Why (audit h35 D7): the engine is normalised by the *stated* dose, not by the data, so frames at 0.45
counts/px denoised as 0.9 came back 38 % too bright (15.4 instead of 35.7 dB) without a word: 0.9 is
inside the engine's trained 0.5-2x, so even ``dose_in_range`` was true. The live service measures each
frame's vacuum level and warns (``service/dose_check.py``); offline nothing did, and TIFF / MRC inputs
state no dose at all (the paper's 125 e/A^2 is assumed).

The same estimator as the service's likelihood stage (``compute/vacuum.py`` ``vacuum_blocks``, with the
``[denoise.likelihood]`` defaults at the engine's working pixel), on every frame's binned counts and its
denoised frame binned back to working pixels: block statistics, cheap beside the engine. Only a level
the service itself trusts counts (``frame_flags.fixed_mismatch``'s rule): finite (the frame is at least
one block a side), not blank, and its blocks flat at the Poisson level. A frame without vacuum fails the
flatness test, so it is never taken as evidence of a wrong dose. Frames outside ``DOSE_BAND`` (the
service's tolerance) of the stated dose are mismatches; one warning per job names the level measured
and the flag to fix, and the output records it. Nothing is rescaled: the denoised frames are the
stated dose's, as live.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch

from sbd_stream.compute.binning import bin_counts
from sbd_stream.compute.evidence import DOSE_BAND
from sbd_stream.compute.vacuum import vacuum_blocks
from sbd_stream.config import DetectorSettings, LikelihoodSettings
from sbd_stream.service.batch import Geometry

log = logging.getLogger(__name__)

MEASURED_DATASET = "measured_vacuum"
"""The output's (n,) float32 per-frame level (counts per detector pixel; NaN: not measured)."""


def measured_vacuum(g: Geometry, raw: np.ndarray, denoised: np.ndarray, blank: np.ndarray) -> np.ndarray:
    """(B,) float32 each frame's own vacuum level in counts per detector pixel of one frame, NaN where the
    service would not trust it (smaller than one estimator block, blank, or its blocks not flat).

    ``raw``: the (B, H, W) counts denoised (unusable pixels already replaced); ``denoised``: the batch
    stage's output at detector pixels, binned back to ``g``'s working pixels as the stage had it (its
    ranking of the blocks is all the estimator takes from it, and their flatness); ``blank``: the stage's
    flag."""
    cfg = LikelihoodSettings().at_pixel(g.working_pixel_A)  # the service's estimator settings
    nan = np.full(raw.shape[0], math.nan, np.float32)
    with torch.no_grad():
        pool = bin_counts(torch.as_tensor(np.ascontiguousarray(raw, np.float32)), g.bin)
        if min(pool.shape[1:]) < cfg.vacuum_block_px:  # too small to hold one block: not measured
            return nan
        den = bin_counts(torch.as_tensor(np.ascontiguousarray(denoised, np.float32)), g.bin)
        est = vacuum_blocks(cfg, [pool], den, masked=True)
    level = est.levels[0].numpy().astype(np.float64) / float(g.bin * g.bin)
    ok = np.isfinite(level) & ~est.raw_not_flat.numpy() & ~np.asarray(blank, bool)
    return np.where(ok, level, nan).astype(np.float32)


def dose_verdict(levels: np.ndarray, detector: DetectorSettings) -> dict[str, Any]:
    """The job's measured level against the stated dose: what the output's attributes and summary say.

    ``measured_vacuum_counts``: the median over the frames measured (None: none had vacuum);
    ``dose_mismatch_frames``: those outside ``DOSE_BAND`` of the stated dose; ``dose_mismatch``: any."""
    got = np.asarray(levels, np.float64)
    got = got[np.isfinite(got)]
    lo, hi = DOSE_BAND
    out: dict[str, Any] = {
        "measured_vacuum_counts": None,
        "measured_dose_ratio": None,
        "measured_vacuum_frames": int(got.size),
        "dose_mismatch_frames": 0,
        "dose_mismatch": False,
    }
    if got.size:
        ratio = got / detector.vacuum_counts
        off = (ratio < lo) | (ratio > hi)
        median = float(np.median(got))
        out.update(
            measured_vacuum_counts=round(median, 6),
            measured_dose_ratio=round(median / detector.vacuum_counts, 4),
            dose_mismatch_frames=int(off.sum()),
            dose_mismatch=bool(off.any()),
        )
    return out


COMMAND = ("run again with --counts-per-px %.3g (or --dose %.3g)", "the output (attributes "
           "measured_vacuum_counts, dose_mismatch; /measured_vacuum)")  # fmt: skip
"""How ``sbd-stream denoise`` / ``replay --offline`` say what to change, and where the level is recorded."""
PYTHON = ("give counts_per_px=%.3g (or dose_e_per_A2=%.3g)", "the result's .measured_vacuum")
"""... and the Python API (``FrameDenoiser``)."""


def warn_mismatch(
    verdict: dict[str, Any], levels: np.ndarray, detector: DetectorSettings, say: tuple[str, str] = COMMAND
) -> None:
    """The one warning of a job whose measured vacuum left ``DOSE_BAND`` of the stated dose; ``say``:
    the fix (its two values: the level and that level per area) and where the levels are recorded."""
    if not verdict["dose_mismatch"]:
        return
    got = np.asarray(levels, np.float64)
    got = got[np.isfinite(got)]
    lo, hi = DOSE_BAND
    off = got[(got < lo * detector.vacuum_counts) | (got > hi * detector.vacuum_counts)]
    vac = float(np.median(off))
    d = detector
    log.warning(
        "measured vacuum level %.3g counts per detector pixel (median of the %d of %d frames with vacuum "
        "outside the band) is %.2fx the stated %.3g (%.4g e/A^2 at %.4g A; outside %.2f-%.2fx): denoised "
        "values follow the stated dose, not the data. If the frames show vacuum (the estimate assumes "
        f"some) and the beam was at this level, {say[0]}. Recorded in {say[1]}",
        vac, off.size, got.size, vac / d.vacuum_counts, d.vacuum_counts, d.dose_per_area, d.pixel_size_A,
        lo, hi, vac, vac / d.pixel_size_A**2,
    )  # fmt: skip


def vacuum_dataset(f: Any, n: int) -> Any:
    """The output's (n,) float32 ``/measured_vacuum`` (h5py file ``f``), created unless there (a resume)."""
    ds = f.require_dataset(MEASURED_DATASET, shape=(n,), dtype=np.float32, fillvalue=np.float32(math.nan))
    ds.attrs["description"] = (
        "each frame's vacuum level measured on its counts (counts per detector pixel of one frame; the "
        "service's estimator); NaN where not measured: no flat vacuum, blank, or smaller than one 5 A "
        "block. Compared with the stated dose (attributes measured_vacuum_counts, dose_mismatch)"
    )
    return ds


def record_verdict(f: Any, verdict: dict[str, Any]) -> None:
    """The verdict as the output's file attributes (a measured level only where there is one: an HDF5
    NaN attribute never compares equal to itself)."""
    for key, value in verdict.items():
        if value is not None:
            f.attrs[key] = value
