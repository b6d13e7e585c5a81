"""Evidence frames: score a frame's columns on counts its denoiser never saw.

The likelihood ratio of a column found in a denoised frame, computed on that frame's own raw counts,
is biased towards "column": the network fitted those very counts, so a spurious column sits where the
noise happened to be high (measured on the detector test split: the raw counts at spurious surface
columns are 10 % above their noise-free value, at true ones 1.8 %; docs/likelihood.md). Counts of
*other* frames of a static specimen carry no such bias. With ``evidence_frames = N`` a frame's columns
are scored on the summed counts of the frames ``seq - N ... seq - 1`` of the same acquisition received
before it (decided at receipt by ``service/evidence_history.py``, never later batch-mates, so a map
does not depend on batching, lane or timing), with the denoised rates scaled by the number of frames
summed, so the ratio is the sum of those frames' ratios. Surface
AUC true vs spurious: 0.74 on own counts, 0.86 / 0.89 / 0.96 with 1 / 2 / 4 evidence frames
(``sbd-train likelihood-study --evidence-frames N``).

Pure planning on host values (headers) and tensor sums on the frames' device; no host -> device copy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

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
    live engines score 93-95 % of them positive over 3 seeds, spurious columns no more often than before
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


def evidence_counts(
    counts: torch.Tensor, denoised: torch.Tensor, plan: list[list[int]], offset: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(counts to score, denoised rates to score them against, frames summed per frame; 0 = own counts).

    ``denoised``: (B, H, W); ``counts``: (offset + B, H, W) at the same pixel, frame j's own counts at
    row ``offset + j`` (rows before are earlier frames kept for evidence); ``plan[j]`` indexes rows of
    ``counts``. Row j of the scored counts is the sum of the planned frames' counts (its own counts when
    the plan is empty), and row j of the rates is the denoised frame j times the number of frames summed
    (at least 1).
    """
    b = denoised.shape[0]
    used = torch.zeros(b, dtype=torch.float32, device=counts.device)
    rows, rates = [], []
    for j, ks in enumerate(plan):
        if ks:
            total = counts[ks[0]].clone()
            for k in ks[1:]:
                total += counts[k]
            rows.append(total)
            rates.append(denoised[j] * float(len(ks)))
            used[j] = float(len(ks))
        else:
            rows.append(counts[offset + j])
            rates.append(denoised[j])
    return torch.stack(rows), torch.stack(rates), used
