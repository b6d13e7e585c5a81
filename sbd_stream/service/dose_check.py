"""The measured dose against the configured one: a sink that watches the likelihood stage's vacuum level.

Why: the network is normalised by the *configured* dose (``detector.vacuum_counts``, ``--dose`` /
``--counts-per-px``), not by the data, so a stream at twice the configured dose came back denoised at
about half its level (0.9 counts/px in, ~0.5 out at 0.45 configured) while the same frame's ``llr``
header said ``meta.vacuum_counts = 0.899``, and nothing told the operator. Beam current drifts in situ.
The likelihood stage estimates each frame's vacuum level from its raw counts (``BatchResult.vacuum``,
counts per detector pixel of one frame, the configured dose's unit); this sink compares the two, counts
frames outside ``DOSE_BAND`` (``sbd_dose_mismatch_frames_total``), exports the last ratio
(``sbd_measured_dose_ratio``) and warns once per acquisition. It never rescales: the estimate assumes
vacuum in the field of view (docs/likelihood.md), and a frame filled by specimen would "correct" a
right dose into a wrong one.

The level checked is each frame's *own* (``BatchResult.measured_vacuum``, from its own counts): with
evidence frames it was the level of the evidence sum, so the frame after a blank one was "measured" at
0.34 in a 0.45 stream and the blank one at 0.45 (audit 24). Blank frames (no beam) count as mismatches
and in ``sbd_blank_frames_total``; their warning is the batch stage's "beam blanked?"
(``service/frame_flags.py``), not advice to restart at 6e-08 counts/px. Frames whose vacuum blocks are
not flat (too little vacuum) count in ``sbd_vacuum_not_flat_frames_total`` and are still checked (their
estimate is 3-20 % high, inside the band; far outside it, as a 0.05 counts/px frame in a 0.45 stream,
the dose is off whatever the blocks). With ``vacuum_mode = "fixed"`` the frames whose own estimate is
reliable are compared with the fixed level instead (``sbd_fixed_vacuum_mismatch_frames_total``; the
stage warns), and evidence frames left out of a frame's LLR count in
``sbd_evidence_frames_left_out_total``. Frames too small to score report no level (0): not checked.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from sbd_stream.compute.evidence import DOSE_BAND
from sbd_stream.compute.likelihood import VacuumMode
from sbd_stream.config import DetectorSettings
from sbd_stream.metrics import Metrics
from sbd_stream.service.batch import BatchResult, BatchStage
from sbd_stream.service.frame_flags import fixed_mismatch
from sbd_stream.service.sink import Sink
from sbd_stream.sinks.record_item import Recent

__all__ = ["DOSE_BAND", "DoseCheck", "dose_check_for"]

log = logging.getLogger(__name__)

# DOSE_BAND (compute/evidence.py): measured / configured vacuum level within it is the configured dose
# (Poisson noise of the estimate over a 10 % vacuum fraction and slow drift stay inside); outside, the
# denoised level follows the configured dose, not the data, by the ratio.


class DoseCheck(Sink):
    """Compares each frame's estimated vacuum to the ``detector``'s configured dose (a worker thread)."""

    name = "dose_check"

    def __init__(
        self,
        detector: DetectorSettings,
        metrics: Metrics,
        band: tuple[float, float] = DOSE_BAND,
        fixed: float | None = None,
    ) -> None:
        """``fixed``: the likelihood's fixed vacuum level (``vacuum_mode = fixed``): no dose check, the
        frames' reliable own levels are compared with it instead."""
        self.detector, self.metrics, self.band, self.fixed = detector, metrics, band, fixed
        self.configured = detector.vacuum_counts  # counts per detector pixel of one frame
        self._warned: Recent = Recent()  # acquisitions already warned about (bounded)

    def result(self, res: BatchResult) -> None:
        m, n = self.metrics, len(res)
        blank = res.blank if res.blank is not None else np.zeros(n, bool)
        m.blank_frames.inc(int(blank.sum()))
        if res.evidence_left_out is not None:
            m.evidence_left_out.inc(int(res.evidence_left_out.sum()))
        measured = res.measured_vacuum if res.measured_vacuum is not None else res.vacuum  # the same in
        if measured is None:  # likelihood off: nothing measured                       # estimate mode
            return
        if self.fixed is not None:
            m.fixed_vacuum_mismatch_frames.inc(int(fixed_mismatch(res, self.fixed).sum()))
            return
        not_flat = res.vacuum_not_flat if res.vacuum_not_flat is not None else np.zeros(n, bool)
        m.vacuum_not_flat_frames.inc(int((not_flat & ~blank).sum()))
        lo, hi = self.band
        for h, vac, no_beam in zip(res.headers, measured.tolist(), blank, strict=True):
            if no_beam:  # a mismatch, but the stage said "beam blanked?": no advice to restart
                m.dose_mismatch_frames.inc()
                continue
            if not (math.isfinite(vac) and vac > 0):  # too small to score
                continue
            ratio = vac / self.configured
            self.metrics.measured_dose_ratio.set(ratio)
            if lo <= ratio <= hi:
                continue
            self.metrics.dose_mismatch_frames.inc()
            if h.acq not in self._warned:
                self._warned[h.acq] = True
                self._warn(h.acq, vac, ratio)

    def _warn(self, acq: str, vac: float, ratio: float) -> None:
        d, (lo, hi) = self.detector, self.band
        log.warning(
            "acquisition %s: measured vacuum level %.3g counts per detector pixel is %.2fx the configured "
            "%.3g (%.4g e/A^2 at %.4g A; outside %.2f-%.2fx): denoised values follow the configured dose, "
            "not the data. If the frames show vacuum (the estimate assumes some) and the beam is at this "
            "level, restart with --counts-per-px %.3g (or --dose %.3g). Counted in "
            "sbd_dose_mismatch_frames_total; logged once per acquisition",
            acq, vac, ratio, self.configured, d.dose_per_area, d.pixel_size_A, lo, hi, vac,
            vac / d.pixel_size_A**2,
        )  # fmt: skip


def dose_check_for(stage: BatchStage, metrics: Metrics) -> DoseCheck | None:
    """The check for a pipeline's stage: always (blank frames are counted without likelihood maps too);
    with ``vacuum_mode = fixed`` against the fixed level. Never None now (kept for the callers' type)."""
    lk = stage.likelihood
    fixed = None
    if lk is not None and lk.cfg.vacuum_mode is VacuumMode.fixed and lk.cfg.vacuum_counts is not None:
        fixed = float(lk.cfg.vacuum_counts)
    return DoseCheck(stage.geometry.detector, metrics, fixed=fixed)
