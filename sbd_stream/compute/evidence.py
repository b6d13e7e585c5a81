"""Evidence frames: score a frame's columns on counts its denoiser never saw.

The likelihood ratio of a column found in a denoised frame, computed on that frame's own raw counts,
is biased towards "column": the network fitted those very counts, so a spurious column sits where the
noise happened to be high (measured on the detector test split: the raw counts at spurious surface
columns are 10 % above their noise-free value, at true ones 1.8 %; docs/likelihood.md). Counts of
*other* frames of a static specimen carry no such bias. With ``evidence_frames = N`` a frame's columns
are scored on the summed counts of the frames ``seq - N ... seq - 1`` of the same acquisition received
before it (decided at receipt by ``service/evidence_history.py``, never later batch-mates, so a map
does not depend on batching, lane or timing), with the denoised rates scaled by the summed dose of
those frames relative to the scored frame's, so the ratio is the sum of those frames' ratios. Surface
AUC true vs spurious: 0.74 on own counts, 0.86 / 0.89 / 0.96 with 1 / 2 / 4 evidence frames
(``sbd-train likelihood-study --evidence-frames N``).

Dose (audit 24): the rates were scaled by the *number* of frames summed, so one blanked frame (or a
beam-current step) among them made every real column of the next N frames score negative (median LLR
-77 against +2.2). Now an evidence frame counts by its own dose, and frames whose dose left
``DOSE_BAND`` of the scored frame's (a blank frame among them) are left out (``evidence_counts``).
A frame left with none is scored on its own counts by the paper's own-frame definition
(``own_frame_config``), as with ``evidence_frames = 0``.

Pure planning on host values (headers) and tensor sums on the frames' device; no host -> device copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from sbd_stream.compute.likelihood_config import ColumnModel, LikelihoodConfig
from sbd_stream.compute.settings_defaults import (  # the evidence defaults (settings_defaults.py)
    DETECTION_SIGMA_A,
    EVIDENCE_RADIUS_A,
)

DOSE_BAND = (0.8, 1.25)
"""A dose within this factor of another is the same beam (the service's dose check uses it too): evidence
frames outside it of the scored frame's are left out, frames measured outside it of the configured dose
are counted. Poisson noise of the estimates and slow drift stay inside."""


def evidence_plan(acq: Sequence[str], seq: Sequence[int], n: int) -> list[list[int]]:
    """For each frame of a batch, the batch positions of up to ``n`` evidence frames (no longer used by
    the service, which scores a frame on the frames before it only: ``service/batch.py``
    ``earlier_frames``; kept for scripts; candidates on both sides make a map depend on its batch).

    Candidates: other frames of the same acquisition at most ``2 n`` sequence numbers away (a dropped
    frame or two does not disqualify a neighbour; a long gap, or another series, does), nearest first,
    the earlier one on a tie. A frame with none (alone in its batch) gets an empty list: it is scored
    on its own counts, and says so (``evidence_frames`` 0 in its ``llr`` message).
    """
    if n <= 0:
        return [[] for _ in seq]
    out = []
    for j in range(len(seq)):
        cand = [
            k
            for k in range(len(seq))
            if k != j and acq[k] == acq[j] and seq[k] != seq[j] and abs(seq[k] - seq[j]) <= 2 * n
        ]
        cand.sort(key=lambda k: (abs(seq[k] - seq[j]), seq[k] > seq[j]))
        out.append(cand[:n])
    return out


def own_frame_config(cfg: LikelihoodConfig) -> LikelihoodConfig | None:
    """The config for a frame scored on its own counts when evidence frames are on (None: ``cfg`` itself).

    Why: with ``evidence_frames > 0`` the defaults are the pattern model over 1.25 A (``evidence_defaults``),
    which the docs call optimistic on a frame's own counts; yet seq 0 of a series, frames after a gap or
    a restart, and frames whose evidence was all left out have none (audit 24: 96 % of hallucinated
    columns positive there against 78 % by the paper's definition). Such a frame is scored as with
    ``evidence_frames = 0``: the constant model, and the 0.7 A disk where the radius is the evidence
    default. A ``column_model = "pattern"`` given explicitly is not used on own counts either. The
    detection (LoG scale, threshold, spacing) is the same in both, so the same columns are scored.
    """
    update: dict[str, Any] = {}
    if cfg.column_model is not ColumnModel.constant:
        update["column_model"] = ColumnModel.constant
    if cfg.column_radius_A == EVIDENCE_RADIUS_A and cfg.log_sigma_A == DETECTION_SIGMA_A:
        update["column_radius_A"] = LikelihoodConfig.model_fields["column_radius_A"].default
        update["log_sigma_A"] = None
    if not update:
        return None
    return LikelihoodConfig(**{**cfg.model_dump(), **update})


def evidence_counts(
    counts: torch.Tensor,
    plan: list[list[int]],
    offset: int,
    level: torch.Tensor,
    blank: torch.Tensor,
    band: tuple[float, float] = DOSE_BAND,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(counts to score, rate scale, evidence frames used, evidence frames left out), one row per frame.

    ``counts``: (offset + B, H, W) at the working pixel, frame j's own counts at row ``offset + j`` (rows
    before are earlier frames kept for evidence); ``plan[j]`` indexes rows of ``counts``; ``level``
    (offset + B,): each row's mean count, its dose for a static specimen; ``blank`` (offset + B,): rows
    without beam. Row j of the scored counts is the sum of the planned frames whose dose lies within
    ``band`` of frame j's (not blank), and the scale is their summed dose over frame j's: the denoised
    frame j times it is the rate of that sum, so the LLR keeps its Poisson meaning whatever the beam did.
    (Scaling without leaving out would too, but a frame at 4x or 0.25x dose is more likely a specimen
    or setting change than a beam step, and ``meta.evidence_frames`` would no longer give the LLR's
    scale.) With none left (an empty plan, or all left out) row j is its own counts, scale 1, used 0.
    Left out counts only frames that had a plan and are not blank themselves. No host sync.
    """
    lo, hi = band
    dev = counts.device
    one = torch.ones((), dtype=torch.float32, device=dev)
    zero = torch.zeros((), dtype=torch.float32, device=dev)
    rows, scale, used, left = [], [], [], []
    for j, ks in enumerate(plan):
        own = counts[offset + j]
        if not ks:
            rows.append(own)
            scale += [one]
            used += [zero]
            left += [zero]
            continue
        mine, total, weight, kept = level[offset + j], torch.zeros_like(own), zero, zero
        for k in ks:
            ratio = level[k] / mine
            keep = (ratio >= lo) & (ratio <= hi) & ~blank[k]
            total = total + torch.where(keep, counts[k], torch.zeros((), dtype=counts.dtype, device=dev))
            weight = weight + torch.where(keep, ratio, zero)
            kept = kept + keep.to(torch.float32)
        some = kept > 0
        rows.append(torch.where(some, total, own))
        scale.append(torch.where(some, weight, one))
        used.append(kept)
        left.append(torch.where(blank[offset + j], zero, len(ks) - kept))
    return torch.stack(rows), torch.stack(scale), torch.stack(used), torch.stack(left)
