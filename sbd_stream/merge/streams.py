"""The reorder buffer's state per acquisition and per (acquisition, topic) stream.

Kept apart from ``reorder.py`` (the rules) so that each stays readable; nothing here decides what goes
out, it only remembers what came.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

from sbd_stream.merge.gaplog import GapLog
from sbd_stream.sources.seqtimes import SeqTimes

__all__ = ["REMEMBER_MISSING", "REMEMBER_TS", "AcqState", "Span", "Stream"]

REMEMBER_MISSING = 1024  # missing ranges remembered per stream, to tell a late frame from a duplicate
REMEMBER_TS = 1024  # numbers per stream whose ts is remembered, to tell a restart from a repeat


@dataclass
class Span:
    """The ``ts`` range of a series and the numbers at its ends: could a frame still be one of its own?

    Kept for a series a restart closed (its stragglers are still on their way from other instances) and
    for an ended one (a few numbers, where the whole ``seq -> ts`` window would cost too much)."""

    lo_ts: float
    lo_seq: int
    hi_ts: float
    hi_seq: int

    def take(self, seq: int, ts: float) -> None:
        if ts < self.lo_ts or (ts == self.lo_ts and seq < self.lo_seq):
            self.lo_ts, self.lo_seq = ts, seq
        if ts > self.hi_ts or (ts == self.hi_ts and seq > self.hi_seq):
            self.hi_ts, self.hi_seq = ts, seq

    def holds(self, seq: int, ts: float) -> bool:
        """Within the series' ``ts`` range, or before it with a number below its earliest frame's (a
        straggler from before the first frame seen). A later ``ts`` is a new series (as it always was),
        and so is an earlier one with a higher number: the sender's clock went back (an NTP step)."""
        if ts < self.lo_ts:
            return seq < self.lo_seq
        return ts <= self.hi_ts


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
    span: Span | None = None  # the ts range of the frames taken
    floor: Span | None = None  # after a restart by a frame: the old series' range (its stragglers)
    gaplog: GapLog = field(init=False)

    def __post_init__(self) -> None:
        self.gaplog = GapLog(self.acq)

    def output_began(self) -> bool:
        return any(st.released or st.n_missing for st in self.streams.values())

    def took(self, seq: int, ts: float | None) -> None:
        if ts is None:
            return
        if self.span is None:
            self.span = Span(ts, seq, ts, seq)
        else:
            self.span.take(seq, ts)
