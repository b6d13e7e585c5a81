"""Defaults the settings need from the compute stage, without torch.

Why a module of their own: ``config.py`` validates settings before anything heavy loads, so that a CLI
refuses a bad value or a busy port in a few hundred ms; importing them from ``binning.py`` and
``evidence.py`` pulled in torch (~1.6 s on a 2-core machine) before the first check. Those modules
re-export them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DEFAULT_TOLERANCE = 0.05
"""Largest relative mismatch between detector pixel x bin factor and the engine's working pixel."""

EVIDENCE_COLUMN_MODEL = "pattern"
EVIDENCE_RADIUS_A = 1.25
DETECTION_SIGMA_A = 0.7 / 2**0.5
"""The LLR's defaults with evidence frames (``evidence_defaults``); the LoG detection scale stays the one
of the 0.7 A default radius."""


def evidence_defaults(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Likelihood settings (a mapping, before validation) with the evidence defaults filled in.

    With evidence frames the LLR is the pattern model over a 1.25 A disk; the detection does not change.
    Why (docs/likelihood.md, "Evidence defaults"): with 4 evidence frames even the noise-free image as the
    alternative leaves ~11 % of the clean image's columns negative on the paper's 0.7 A disk (a counts
    limit: weak support columns ~7 % above vacuum); on 1.25 A (under half the 2.77 A Pt-Pt spacing) the
    live engines score 93-95 % of the detected real columns positive over 3 seeds (of all the clean
    image's columns, 80-84 % are detected and positive), spurious columns no more often than before
    (~25 %). Values given explicitly are kept; without evidence frames nothing changes.
    """
    out = dict(settings)
    if int(out.get("evidence_frames", 0) or 0) <= 0:
        return out
    out.setdefault("column_model", EVIDENCE_COLUMN_MODEL)
    if "column_radius_A" not in out:
        out["column_radius_A"] = EVIDENCE_RADIUS_A
        out.setdefault("log_sigma_A", DETECTION_SIGMA_A)  # columns are still found at the paper's scale
    return out
