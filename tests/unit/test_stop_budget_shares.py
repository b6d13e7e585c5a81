"""``StopBudget``'s shares of ``stop_timeout_s``, as docs/service.md "The stop's budget" states them.

docs/service.md: input and denoise workers get "the first half (5 s), plus ``lanes.complete_timeout_s``
with the complete lane on"; a batch in a worker's hands "up to a sixth more (1.7 s)"; publisher and
recorder "at least the last third (3.3 s)"; "So ``serve`` stops within ``stop_timeout_s`` +
``lanes.complete_timeout_s`` + about 4 s (the 3 s to close, and 1 s of grace before a thread still running
is named)". A share too small loses frames; a bound too small has the supervisor kill a stop in progress.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sbd_stream.config import ServiceSettings
from sbd_stream.service.pipeline import CLOSE_S, RUNNING_GRACE_S, StopBudget

DOCS = Path(__file__).resolve().parents[2] / "docs" / "service.md"


@pytest.mark.parametrize(("stop_s", "complete_s"), [(10.0, 0.0), (10.0, 15.0), (600.0, 0.0), (0.3, 2.0)])
def test_each_part_gets_its_documented_share(stop_s: float, complete_s: float) -> None:
    b = StopBudget(stop_s, complete_s)
    assert b.workers_s == pytest.approx(stop_s / 2 + complete_s)
    assert b.in_flight_s == pytest.approx(stop_s / 6)
    assert b.outputs_s == pytest.approx(stop_s / 3)
    assert b.total_s == pytest.approx(stop_s + complete_s)
    assert b.workers_s + b.outputs_s <= b.total_s  # the outputs' third fits after the workers' half


def test_the_bound_is_the_budget_plus_the_time_to_close_and_to_name_what_still_runs() -> None:
    """``bound_s`` is what a supervisor's stop timeout must allow: nothing the stop may take is left out."""
    assert pytest.approx(4.0) == CLOSE_S + RUNNING_GRACE_S  # "about 4 s"
    for stop_s, complete_s in [(10.0, 0.0), (10.0, 15.0), (2.0, 0.5)]:
        b = StopBudget(stop_s, complete_s)
        assert b.bound_s == pytest.approx(stop_s + complete_s + 4.0)


def test_the_docs_numbers_are_the_default_stop_timeouts_shares() -> None:
    """The table's 5 s, 1.7 s and 3.3 s are the default ``stop_timeout_s``'s shares."""
    b = StopBudget(ServiceSettings().stop_timeout_s)
    text = " ".join(DOCS.read_text().split())
    assert f"the first half ({b.workers_s:.2g} s)" in text
    assert f"up to a sixth more ({b.in_flight_s:.2g} s)" in text
    assert f"at least the last third ({b.outputs_s:.2g} s)" in text
