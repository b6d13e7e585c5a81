"""The reorder buffer's state per acquisition and per (acquisition, topic) stream.

Kept apart from ``reorder.py`` (the rules) so that each stays readable; nothing here decides what goes
out, it only remembers what came.
"""

from __future__ import annotations

import bisect
import collections
import math
from array import array
from dataclasses import dataclass, field
from typing import Any

from sbd_stream.merge.gaplog import GapLog
from sbd_stream.sources.seqtimes import TS_TOLERANCE_S, SeqTimes, same_ts

__all__ = ["REMEMBER_MISSING", "REMEMBER_TS", "SAME_START_S", "AcqState", "OldSeries", "Span", "Stream"]

REMEMBER_MISSING = 1024  # missing ranges remembered per stream, to tell a late frame from a duplicate
REMEMBER_TS = 1024  # numbers per stream whose ts is remembered, to tell a restart from a repeat
SAME_START_S = 2.0  # copies of one series_start (same meta) whose ts differ by less are the same start


@dataclass
class Span:
    """The ``ts`` range of a series and the numbers at its ends (the lowest ``ts`` and its number)."""

    lo_ts: float
    lo_seq: int
    hi_ts: float
    hi_seq: int

    def take(self, seq: int, ts: float) -> None:
        if ts < self.lo_ts or (ts == self.lo_ts and seq < self.lo_seq):
            self.lo_ts, self.lo_seq = ts, seq
        if ts > self.hi_ts or (ts == self.hi_ts and seq > self.hi_seq):
            self.hi_ts, self.hi_seq = ts, seq


class OldSeries:
    """A series a restart or its end closed: could a frame still coming be one of its stragglers?

    Kept per acquisition while its next series runs (``AcqState.floor``) and for ended ones (the
    buffer's ``closed``). It once kept only the ``ts`` range, and every frame inside it was a straggler:
    after a restart with the clock stepped back by D seconds (an NTP step: 0.1 s to a few s), the new
    series' first D seconds were dropped as late. Now a frame is a straggler only when its ``seq`` and
    ``ts`` fit the old series' own ``seq -> ts`` (the same rule as ``SeqTimes.fits``): a number it had
    with the same ``ts`` (a repeat), or one it did not have whose ``ts`` lies between those of its
    neighbours in the old series. The new series' frames carry the old numbers with other ``ts``, so
    they do not fit. Stored compactly (two arrays, both topics together: a frame's ``ts`` is the same
    on each), as up to ``REMEMBER_CLOSED`` ended acquisitions are remembered.

    ``start_ts`` / ``start_meta``: the ``series_start`` it took, so that a late copy of that start
    (another instance forwarding it) does not open an ended acquisition anew."""

    def __init__(
        self,
        span: Span,
        times: list[SeqTimes],
        start_ts: float | None = None,
        start_meta: dict[str, Any] | None = None,
    ) -> None:
        both: dict[int, float | None] = {}
        for t in times:
            both.update(t.items())
        seqs = sorted(both)[-REMEMBER_TS:]
        self.span, self.start_ts, self.start_meta = span, start_ts, start_meta
        self.seqs = array("q", seqs)
        self.ts = array("d", (math.nan if (v := both[q]) is None else v for q in seqs))  # nan: sent none

    def same_start(self, ts: float | None, meta: dict[str, Any] | None) -> bool:
        """A ``series_start`` with the ended series' ``meta`` and ``ts`` (up to rounding): a late copy."""
        return (
            (self.start_meta or {}) == (meta or {})
            and ts is not None
            and self.start_ts is not None
            and same_ts(self.start_ts, ts)
        )

    def holds(self, seq: int, ts: float | None, fits_new: bool = True) -> bool:
        """Is frame ``seq`` with ``ts`` one of this series' own (late or repeated), not a new series'?

        Below every number remembered: only with a number below the series' earliest frame and a ``ts``
        not after it (a straggler from before the first frame seen). Above them all: with a ``ts`` not
        before the newest's, and either at the series' end or not fitting the series that followed
        (``fits_new``: it would make that one's ``ts`` go backwards). Without a ``ts`` nothing can be
        told: it is the old series'."""
        if ts is None or not self.seqs:
            return True
        i = bisect.bisect_left(self.seqs, seq)
        n, tol = len(self.seqs), TS_TOLERANCE_S
        if i < n and self.seqs[i] == seq:
            return math.isnan(self.ts[i]) or same_ts(self.ts[i], ts)
        below = self.ts[i - 1] if i > 0 else math.nan
        above = self.ts[i] if i < n else math.nan
        if i == 0:
            return seq < self.span.lo_seq and ts <= self.span.lo_ts + tol
        if i == n:
            return (math.isnan(below) or below - tol <= ts) and (ts <= self.span.hi_ts + tol or not fits_new)
        return (math.isnan(below) or below - tol <= ts) and (math.isnan(above) or ts <= above + tol)


@dataclass
class Stream:
    """One (acquisition, topic): the frames waiting and where the ordered output stands."""

    next: int | None  # the next seq to release; None until the stream's first number is known
    anchor: int | None = None  # the first seq released (or declared missing)
    buf: dict[int, tuple[float, Any]] = field(default_factory=dict)  # seq -> (arrival, payload)
    missing: collections.deque[tuple[int, int]] = field(
        default_factory=lambda: collections.deque(maxlen=REMEMBER_MISSING)
    )
    released: int = 0
    n_missing: int = 0
    top: int = -1  # the highest seq taken (held or gone out since)
    times: SeqTimes = field(default_factory=lambda: SeqTimes(REMEMBER_TS))  # seq -> ts of those taken

    def oldest(self) -> float:
        return min(t for t, _ in self.buf.values())

    def was_missing(self, seq: int) -> bool:
        return any(a <= seq <= b for a, b in self.missing)

    def seen(self, seq: int) -> bool:
        """Is ``seq`` not above a number this stream already has (gone out, declared missing or held)?

        A frame of the same series with such a number is a duplicate or a late one; with a ``ts`` that
        does not fit (``SeqTimes.fits``) it belongs to a new series (its sender restarted). Held counts
        too: frames wait for their ``series_start`` or behind a gap, and the restarted sender's new
        frames came while the old ones waited (they were dropped as duplicates)."""
        return seq <= self.top or (self.next is not None and seq < self.next)

    def hold(self, seq: int, now: float, payload: Any, ts: float | None) -> None:
        self.buf[seq] = (now, payload)
        self.top = max(self.top, seq)
        self.times.add(seq, ts)


@dataclass
class AcqState:
    acq: str
    first_seen: float
    last_frame: float
    started: bool = False  # series_start forwarded, or given up waiting for it
    streams: dict[bytes, Stream] = field(default_factory=dict)
    end: Any = None  # the first series_end's payload
    end_at: float = 0.0
    expected: int | None = None
    late_logged: bool = False
    start_ts: float | None = None  # ts of the series_start taken (not a joined / resumed re-announcement)
    start_meta: dict[str, Any] | None = None  # and its meta: with the ts, what identifies that start
    span: Span | None = None  # the ts range of the frames taken
    floor: OldSeries | None = None  # after a restart: the old series (its stragglers still on their way)
    maybe_start: tuple[Any, float, dict[str, Any] | None, float] | None = None  # (payload, ts, meta, now)
    # a series_start like the one taken, its ts a little off: another instance's copy (dropped), or a
    # sender that restarted within SAME_START_S (forwarded as the new series' start when a frame tells it)
    gaplog: GapLog = field(init=False)

    def __post_init__(self) -> None:
        self.gaplog = GapLog(self.acq)

    def output_began(self) -> bool:
        return any(st.released or st.n_missing for st in self.streams.values())

    def same_start(self, ts: float | None, meta: dict[str, Any] | None) -> bool:
        """Is a ``series_start`` with ``ts`` and ``meta`` a copy of the one taken (``same_start``)?"""
        return same_start(self.start_ts, self.start_meta, ts, meta)

    def old_series(self) -> OldSeries | None:
        """What is kept of this series once closed (None when no frame carried a ``ts``)."""
        if self.span is None:
            return None
        return OldSeries(
            self.span, [st.times for st in self.streams.values()], self.start_ts, self.start_meta
        )

    def took(self, seq: int, ts: float | None) -> None:
        if ts is None:
            return
        if self.span is None:
            self.span = Span(ts, seq, ts, seq)
        else:
            self.span.take(seq, ts)


def same_start(
    taken_ts: float | None, taken_meta: dict[str, Any] | None, ts: float | None, meta: dict[str, Any] | None
) -> bool:
    """Is a ``series_start`` (``ts``, ``meta``) a copy of the one taken, not a restarted sender's new one?

    Every instance forwards the sender's start; without a sender ``ts`` each stamps its own receive time
    (docs/wire-format.md), so copies differ by the instances' lag, earlier or later. A start is
    identified by its content -- the acquisition (the key), its ``meta`` -- and a ``ts`` within
    ``SAME_START_S``; without a ``ts`` on either side, the same ``meta`` is enough. A sender restarting
    within ``SAME_START_S`` with the same ``meta`` is still told by its frames (``SeqTimes.fits``)."""
    if (taken_meta or {}) != (meta or {}):
        return False
    return taken_ts is None or ts is None or abs(ts - taken_ts) <= SAME_START_S
