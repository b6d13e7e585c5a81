"""Evidence frames (compute/evidence.py): which frames score a frame's columns, and the sums they give."""

from __future__ import annotations

import pytest
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


def test_counts_are_summed_and_rates_scaled_by_the_dose_of_the_frames_kept() -> None:
    """Rates were scaled by the number of frames summed, so a blank frame among them made every column of
    the next N frames negative (audit 24): now by their dose, blank and out-of-band frames left out."""
    values = [2.0, 4.0, 0.0, 2.0, 2.2, 0.0, 2.0]  # rows 0-2 earlier (1x, 2x dose, blank); 3-6 the batch
    counts = torch.tensor(values).reshape(7, 1, 1).expand(7, 2, 3).clone()
    level = counts.mean(dim=(1, 2))
    blank = level < 0.1
    plan = [[0, 1, 2], [3, 0], [0], []]
    scored, scale, used, left = evidence_counts(counts, plan, 3, level, blank)
    assert scored[:, 0, 0].tolist() == [2.0, 4.0, 0.0, 2.0]  # e0 only; f0 + e0; blank: own; none: own
    assert scale.tolist() == pytest.approx([1.0, 2.0 / 2.2 + 2.0 / 2.2, 1.0, 1.0])
    assert used.tolist() == [1.0, 2.0, 0.0, 0.0]
    assert left.tolist() == [2.0, 0.0, 0.0, 0.0]  # the 2x and the blank frame; a blank frame counts none
    assert counts[0, 0, 0] == 2.0  # the input is not modified in place


def test_evidence_frames_change_the_llr_defaults_but_not_the_detection_or_explicit_values() -> None:
    """With evidence frames the LLR is the pattern model over a 1.25 A disk (docs/likelihood.md,
    "Evidence defaults"); columns are still found at the 0.7 A default's LoG scale; given values stay,
    whichever way the settings arrive (keyword, flags dict, TOML-like nesting)."""
    from sbd_stream.cli.options import service_settings
    from sbd_stream.compute.evidence import EVIDENCE_RADIUS_A
    from sbd_stream.compute.likelihood import ColumnModel
    from sbd_stream.config import LikelihoodSettings

    plain, ev = LikelihoodSettings(enabled=True), LikelihoodSettings(enabled=True, evidence_frames=4)
    assert (plain.column_model, plain.column_radius_A) == (ColumnModel.constant, 0.7)
    assert (ev.column_model, ev.column_radius_A) == (ColumnModel.pattern, EVIDENCE_RADIUS_A)
    assert ev.at_pixel(0.24).sigma_px == plain.at_pixel(0.24).sigma_px  # same columns found
    assert ev.at_pixel(0.24).radius_px > plain.at_pixel(0.24).radius_px
    given = LikelihoodSettings(evidence_frames=4, column_model="constant", column_radius_A=0.9)
    assert (given.column_model, given.column_radius_A, given.log_sigma_A) == (ColumnModel.constant, 0.9, None)
    s = service_settings(None, {"denoise": {"likelihood": {"enabled": True, "evidence_frames": 4}}})
    assert s.denoise.likelihood.column_model is ColumnModel.pattern
    assert s.denoise.likelihood.column_radius_A == EVIDENCE_RADIUS_A
