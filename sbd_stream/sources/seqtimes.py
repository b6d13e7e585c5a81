"""The ``ts`` each recent ``seq`` of a series carried: what tells a restart from a duplicate or a late frame.

A sender that restarts re-using its acquisition id numbers its frames from 0 again. An instance that
shares a PUSH stream with others may never see the new seq 0 or ``series_start``, and the merge sees
every number twice. Their first sign of the new series is a number that came already (or one below the
newest), so the frame's ``ts`` has to decide. The rule was "``ts`` later than every frame so far": a
sender whose clock was corrected backwards (an NTP step) before it restarted had its new series dropped
as duplicates, appended to the old series' part, or lost from the merged stream. It must not depend on
the clock going forward, only on ``ts`` never going backwards *within* a series (docs/wire-format.md):

* a number seen before is the same frame again (a duplicate) only with the same ``ts``: a
  retransmission; with any other ``ts``, earlier or later, it belongs to a new series;
* a number not seen before, below the newest, is a late frame (reordering) when its ``ts`` lies between
  those of the nearest numbers seen below and above it; otherwise the series' ``ts`` would go backwards,
  so it belongs to a new series.

"The same ``ts``" allows ``TS_TOLERANCE_S`` (``same_ts``): a retransmission re-serialised elsewhere may
come back rounded (to the microsecond by a bridge printing 6 decimals, to float32 by one storing it so),
and a rounding must not make a duplicate a restart (a new recording part and a phantom gap). 1 ms
covers microsecond rounding and float32 of a ``ts`` below 16384 s (relative times; a float32 Unix time
has 128 s steps and cannot be told apart at all), yet stays far below any real restart's shift (the
same number's ``ts`` moves by the sender's restart time, seconds). The neighbour bounds get it too.

A constant ``ts`` (or none) always fits: such a sender stays the documented ambiguous case. Shared by the
input's ``SequenceTracker`` and the merge's reorder buffer, so both classify the same frames the same way.
"""

from __future__ import annotations

import bisect
import collections

__all__ = ["TS_TOLERANCE_S", "SeqTimes", "same_ts"]

TS_TOLERANCE_S = 1e-3
"""Two ``ts`` closer than this are the same (module doc: rounding of a retransmission)."""


def same_ts(a: float, b: float) -> bool:
    """Is ``b`` the ``ts`` ``a`` again, up to rounding (``TS_TOLERANCE_S``)?"""
    return abs(a - b) <= TS_TOLERANCE_S


class SeqTimes:
    """A bounded window of ``seq -> ts`` (the ``size`` numbers added last), searchable by ``seq``."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self._ts: dict[int, float | None] = {}
        self._order: collections.deque[int] = collections.deque()  # insertion order, for eviction
        self._sorted: list[int] = []

    def __contains__(self, seq: int) -> bool:
        return seq in self._ts

    def __len__(self) -> int:
        return len(self._ts)

    def ts(self, seq: int) -> float | None:
        """The ``ts`` remembered for ``seq`` (None when not remembered or sent without one)."""
        return self._ts.get(seq)

    def clear(self) -> None:
        self._ts.clear()
        self._order.clear()
        self._sorted.clear()

    def add(self, seq: int, ts: float | None) -> None:
        """Remember ``seq``'s ``ts``; the number added longest ago is forgotten past ``size``."""
        if seq in self._ts:
            self._ts[seq] = ts
            return
        if len(self._order) >= self.size:
            old = self._order.popleft()
            del self._ts[old]
            del self._sorted[bisect.bisect_left(self._sorted, old)]
        self._ts[seq] = ts
        self._order.append(seq)
        bisect.insort(self._sorted, seq)

    def fits(self, seq: int, ts: float | None) -> bool:
        """Could frame ``seq`` with ``ts`` belong to the series these numbers came from (module doc)?"""
        if ts is None:
            return True
        if seq in self._ts:
            seen = self._ts[seq]
            return seen is None or same_ts(seen, ts)
        i = bisect.bisect_left(self._sorted, seq)
        below = self._ts[self._sorted[i - 1]] if i > 0 else None
        above = self._ts[self._sorted[i]] if i < len(self._sorted) else None
        return (below is None or below - TS_TOLERANCE_S <= ts) and (
            above is None or ts <= above + TS_TOLERANCE_S
        )

    def items(self) -> list[tuple[int, float | None]]:
        """``(seq, ts)`` of every number remembered, in ``seq`` order."""
        return [(q, self._ts[q]) for q in self._sorted]
