"""The reorder buffer's state per acquisition and per (acquisition, topic) stream.

Kept apart from ``reorder.py`` (the rules) so that each stays readable; nothing here decides what goes
out, it only remembers what came.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

from sbd_stream.merge.gaplog import GapLog

__all__ = ["REMEMBER_MISSING", "AcqState", "Stream"]

REMEMBER_MISSING = 1024  # missing ranges remembered per stream, to tell a late frame from a duplicate


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

    def oldest(self) -> float:
        return min(t for t, _ in self.buf.values())

    def was_missing(self, seq: int) -> bool:
        return any(a <= seq <= b for a, b in self.missing)

    def seen(self, seq: int) -> bool:
        """Is ``seq`` not above a number this stream already has (gone out, declared missing or held)?

        A frame of the same series with such a number is a duplicate or a late one; with a later
        ``ts`` than every frame so far it belongs to a new series (its sender restarted). Held counts
        too: frames wait for their ``series_start`` or behind a gap, and the restarted sender's new
        frames came while the old ones waited (they were dropped as duplicates)."""
        return seq <= self.top or (self.next is not None and seq < self.next)

    def hold(self, seq: int, now: float, payload: Any) -> None:
        self.buf[seq] = (now, payload)
        self.top = max(self.top, seq)


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
    newest_ts: float | None = None  # the latest ts of a frame taken
    floor_ts: float | None = None  # after a restart by a frame: frames up to this ts are the old series'
    gaplog: GapLog = field(init=False)

    def __post_init__(self) -> None:
        self.gaplog = GapLog(self.acq)

    def output_began(self) -> bool:
        return any(st.released or st.n_missing for st in self.streams.values())

    def took(self, ts: float | None) -> None:
        if ts is not None and (self.newest_ts is None or ts > self.newest_ts):
            self.newest_ts = ts
