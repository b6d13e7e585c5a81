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

Only with an *estimated* vacuum: ``vacuum_mode = "fixed"`` reports the configured level back, and frames
too small to score report none (0), so neither is checked.
"""

from __future__ import annotations

import logging
import math

from sbd_stream.compute.likelihood import VacuumMode
from sbd_stream.config import DetectorSettings
from sbd_stream.metrics import Metrics
from sbd_stream.service.batch import BatchResult, BatchStage
from sbd_stream.service.sink import Sink
from sbd_stream.sinks.record_item import Recent

__all__ = ["DOSE_BAND", "DoseCheck", "dose_check_for"]

log = logging.getLogger(__name__)

DOSE_BAND = (0.8, 1.25)
"""Measured / configured vacuum level within this band is the configured dose (Poisson noise of the
estimate over a 10 % vacuum fraction and slow drift stay inside); outside, the denoised level follows
the configured dose, not the data, by the ratio."""


class DoseCheck(Sink):
    """Compares each frame's estimated vacuum to the ``detector``'s configured dose (a worker thread)."""

    name = "dose_check"

    def __init__(
        self, detector: DetectorSettings, metrics: Metrics, band: tuple[float, float] = DOSE_BAND
    ) -> None:
        self.detector, self.metrics, self.band = detector, metrics, band
        self.configured = detector.vacuum_counts  # counts per detector pixel of one frame
        self._warned: Recent = Recent()  # acquisitions already warned about (bounded)

    def result(self, res: BatchResult) -> None:
        if res.vacuum is None:
            return
        lo, hi = self.band
        for h, vac in zip(res.headers, res.vacuum.tolist(), strict=True):
            if not (math.isfinite(vac) and vac > 0):  # too small to score: no level estimated
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
    """A check for a pipeline whose stage estimates the vacuum (likelihood on, ``vacuum_mode`` estimate)."""
    lk = stage.likelihood
    if lk is None or lk.cfg.vacuum_mode is VacuumMode.fixed:
        return None
    return DoseCheck(stage.geometry.detector, metrics)
