"""Evidence frames (compute/evidence.py): which frames score a frame's columns, and the sums they give."""

from __future__ import annotations

import torch

from sbd_stream.compute.evidence import evidence_counts, evidence_plan


def test_plan_takes_the_nearest_frames_of_the_same_acquisition_earlier_first_on_ties() -> None:
    acq, seq = ["a"] * 5, [10, 11, 12, 13, 14]
    plan = evidence_plan(acq, seq, 2)
    assert plan[0] == [1, 2]  # only later ones exist
    assert plan[2] == [1, 3]  # one each side; the earlier first
    assert plan[4] == [3, 2]
    assert evidence_plan(acq, seq, 0) == [[]] * 5
    assert all(j not in ks for j, ks in enumerate(evidence_plan(acq, seq, 8)))  # never the frame itself


def test_plan_never_crosses_a_series_or_a_long_gap_and_leaves_a_lone_frame_on_its_own_counts() -> None:
    plan = evidence_plan(["a", "a", "b", "b", "a"], [0, 1, 0, 1, 50], 2)
    assert plan == [[1], [0], [3], [2], []]  # seq 50 is 49 frames away: not the same specimen state
    assert evidence_plan(["a", "a"], [3, 3], 1) == [[], []]  # a repeated sequence number is no evidence
    assert evidence_plan(["a"], [0], 4) == [[]]


def test_counts_are_summed_and_rates_scaled_by_the_frames_used() -> None:
    counts = torch.arange(4, dtype=torch.float32).reshape(4, 1, 1).expand(4, 2, 3).clone()
    den = torch.full((4, 2, 3), 0.5)
    scored, rates, used = evidence_counts(counts, den, [[1, 2], [0], [], [0, 1, 2]])
    assert scored[:, 0, 0].tolist() == [3.0, 0.0, 2.0, 3.0]  # 1+2, 0, own (2), 0+1+2
    assert rates[:, 0, 0].tolist() == [1.0, 0.5, 0.5, 1.5]
    assert used.tolist() == [2.0, 1.0, 0.0, 3.0]
    assert counts[0, 0, 0] == 0.0  # the input is not modified in place
