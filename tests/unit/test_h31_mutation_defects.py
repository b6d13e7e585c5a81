"""Two defects the mutation round h31 found (tests/unit/test_*_mutants31.py pin the rest).

- ``--dose 200`` on an input stating 0.45 counts/px (a serve recording, HDF5 attributes) ran at 0.72
  counts/px without the warning ``--counts-per-px`` gives: a stated dose of either unit is dropped
  once a dose option is given, and the check compared key by key.
- The "seq more than MAX_GAP past the last" warning is once per acquisition, but ``reset`` kept the
  flag, so a tracker reused for every series (the DECTRIS dialect's) said it for the first series only.
"""

from __future__ import annotations

import logging

import pytest

from sbd_stream.service.offline_plan import overridden
from sbd_stream.sources.sequence import MAX_GAP, SequenceTracker


@pytest.mark.parametrize(
    "stated, given, said",
    [
        (
            {"pixel_size_A": 0.06, "counts_per_px": 0.45},
            {"dose_e_per_A2": 200.0},
            "--dose 200 replaces the 0.45",
        ),
        (
            {"pixel_size_A": 0.06, "dose_e_per_A2": 125.0},
            {"counts_per_px": 0.9},
            "--counts-per-px 0.9 replaces",
        ),
        ({"counts_per_px": 0.45}, {"pixel_size_A": 0.06, "dose_e_per_A2": 200.0}, "--dose 200 replaces"),
    ],
)
def test_a_dose_option_in_the_other_unit_says_it_replaces_the_stated_dose(
    stated: dict, given: dict, said: str
) -> None:
    note = overridden(stated, given)
    assert note is not None and said in note


def test_the_same_dose_in_the_other_unit_says_nothing() -> None:
    assert overridden({"pixel_size_A": 0.06, "counts_per_px": 0.45}, {"dose_e_per_A2": 125.0}) is None
    assert overridden({"pixel_size_A": 0.06, "dose_e_per_A2": 125.0}, {"counts_per_px": 0.45}) is None
    assert overridden({"counts_per_px": 0.45}, {"dose_e_per_A2": 200.0}) is None  # no pixel size: no compare


def test_each_acquisition_of_a_reused_tracker_gets_its_jump_warning(caplog: pytest.LogCaptureFixture) -> None:
    t = SequenceTracker()
    with caplog.at_level(logging.WARNING, logger="sbd_stream.sources.sequence"):
        for acq in ("s1", "s2"):
            t.reset(acq)  # as the DECTRIS dialect does at each series
            t.observe(acq, 0)
            t.observe(acq, MAX_GAP * 4)
            t.observe(acq, MAX_GAP * 8)  # the same acquisition again: still once
    said = [r.getMessage() for r in caplog.records if "past the last number" in r.getMessage()]
    assert [m.split(":")[0] for m in said] == ["acquisition s1", "acquisition s2"]
