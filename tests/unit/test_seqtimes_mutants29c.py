"""Mutation round h29c on sources/seqtimes.py (``SeqTimes``, ``same_ts``): the window's bounds and the
``fits`` rule at its edges, which the sequence and merge tests reach only through whole streams (each
test below failed on a mutant of the module and passes on it as it is)."""

from __future__ import annotations

import pytest

from sbd_stream.sources.seqtimes import TS_TOLERANCE_S, SeqTimes, same_ts


def test_same_ts_includes_the_tolerance_itself_and_a_microsecond_rounding() -> None:
    assert same_ts(0.0, TS_TOLERANCE_S) and same_ts(TS_TOLERANCE_S, 0.0)
    assert same_ts(100.0, 100.0005)  # a bridge printing 6 decimals rounds by at most 0.5 us; 0.5 ms here
    assert not same_ts(0.0, 2 * TS_TOLERANCE_S)


@pytest.mark.parametrize("size", [0, 1])
def test_a_window_of_one_or_less_keeps_the_last_number_only(size: int) -> None:
    w = SeqTimes(size)
    w.add(1, 1.0)
    w.add(2, 2.0)
    assert 2 in w and 1 not in w and len(w) == 1


def test_the_window_forgets_the_number_added_longest_ago_not_the_smallest() -> None:
    w = SeqTimes(3)
    for q in (5, 3, 1, 7):
        w.add(q, float(q))
    assert len(w) == 3 and 5 not in w and all(q in w for q in (1, 3, 7))
    assert w.items() == [(1, 1.0), (3, 3.0), (7, 7.0)]  # in seq order, not in order of adding


def test_a_number_added_again_takes_its_new_ts_and_one_place_in_the_window() -> None:
    w = SeqTimes(2)
    w.add(1, 1.0)
    w.add(1, 9.0)
    assert w.ts(1) == 9.0
    w.add(2, 2.0)
    assert 1 in w and 2 in w and w.items() == [(1, 9.0), (2, 2.0)]
    w.add(3, 3.0)
    assert w.items() == [(2, 2.0), (3, 3.0)]


def test_fits_a_number_seen_without_ts_and_a_frame_without_ts() -> None:
    w = SeqTimes(8)
    w.add(3, None)
    w.add(4, 4.0)
    assert w.fits(3, 123.0)  # the sender gave no ts then: nothing to tell them apart
    assert w.fits(4, None) and w.fits(9, None)


def test_a_late_number_must_lie_between_its_neighbours_ts_up_to_the_tolerance() -> None:
    w = SeqTimes(8)
    w.add(1, 10.0)
    w.add(5, 20.0)
    assert w.fits(3, 15.0)
    assert w.fits(3, 10.0 - TS_TOLERANCE_S / 2) and w.fits(3, 20.0 + TS_TOLERANCE_S / 2)
    assert not w.fits(3, 9.0)  # before number 1's ts: the series' ts would go backwards
    assert not w.fits(3, 21.0)  # after number 5's
    assert not w.fits(0, 10.5) and w.fits(0, 9.0)  # below every number: bounded above only
    assert not w.fits(6, 19.0) and w.fits(6, 30.0)  # above every number: bounded below only


def test_a_cleared_window_starts_over() -> None:
    w = SeqTimes(4)
    w.add(1, 1.0)
    w.add(2, 2.0)
    w.clear()
    assert len(w) == 0 and w.items() == []
    w.add(5, 5.0)
    assert w.fits(3, 4.0) and not w.fits(3, 6.0)
    assert w.items() == [(5, 5.0)]
