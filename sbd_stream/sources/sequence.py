"""Continuity accounting from sequence numbers, shared by every dialect that numbers its frames.

ZeroMQ drops silently at a high-water mark and senders restart without warning, so the only record of
what was lost is the (acquisition, sequence) pair each frame carries. Wire format v1 and the DECTRIS
series state machine both count gaps, duplicates, late frames and restarts the same way through here,
so the metrics mean the same thing whichever detector is attached.
"""

from __future__ import annotations

import collections
import enum
import logging
import time

from sbd_stream.log_limit import RateLimitedLog
from sbd_stream.metrics import Metrics
from sbd_stream.sources.gaplog import GapLog
from sbd_stream.sources.seqtimes import SeqTimes

__all__ = ["AcquisitionSequences", "LateStartNotice", "SeqEvent", "SequenceTracker", "count_sequence_event"]

log = logging.getLogger(__name__)

INPUT_GAP_LOG_EVERY_S = 60.0
"""At most one summed-up gap line per acquisition per this many seconds, after its first gap."""
MAX_GAP = 2**32
"""Most frames one jump forward (or an acquisition's first number) counts as missing. A larger jump is the
sender's own numbering (a time stamp, a counter since power-on: 2^32 frames are 3.4 years at 40 Hz), taken
as a restart with nothing missing: one first frame numbered 2^63 - 2 (valid) added 9.2e18 to the float
``sbd_frames_missing_total``, and every later gap (+1, +2 ...) then vanished in its rounding (audit h30)."""
REMEMBER_EVICTED = 4096
"""Acquisitions past the tracked ones whose numbering is remembered (their last seq and its ts)."""
_GAP_HINT = (
    " (counted in sbd_frames_missing_total and sbd_sequence_gaps_total: lost by the sender, the network "
    "or a PUB at its high-water mark; on a PULL input shared by several instances the others took them. "
    f"Later gaps of this acquisition are summed up, one line per {INPUT_GAP_LOG_EVERY_S:.0f} s)"
)


class SeqEvent(enum.Enum):
    ok = "ok"
    gap = "gap"
    restart = "restart"
    duplicate = "duplicate"
    out_of_order = "out_of_order"


class LateStartNotice:
    """Says why an acquisition's first frames are missing: once at WARNING, then at INFO per acquisition.

    Numbering starts at 0 (wire format v1, DECTRIS), so a first frame numbered 33 means 33 frames were
    sent and never received. The usual cause is a bridge whose PUB sends right after binding: a PUB
    drops everything sent before a subscriber has connected (ZeroMQ's slow joiner). Counting them is
    not enough for a site to find that cause, so the first occurrence says it in the log.
    """

    def __init__(self) -> None:
        self.warned = False

    def __call__(self, acq: str, seq: int) -> None:
        if self.warned:
            log.info("acquisition %s started at seq %d: %d frames before it were not received", acq, seq, seq)
            return
        self.warned = True
        log.warning(
            "acquisition %s started at seq %d: %d frames before it were not received (counted in "
            "sbd_frames_missing_total). A PUB bound just before sending loses the first messages until "
            "the service has connected: wait after binding, or send on PUSH to a PULL input; with a PUSH "
            "stream shared by several instances the others took them (see docs/wire-format.md). Later "
            "acquisitions that start late are logged at INFO",
            acq,
            seq,
            seq,
        )


class SequenceTracker:
    """Per-stream continuity accounting from the (acq, seq) pairs in the headers.

    Numbering starts at 0, so an acquisition's first frame with seq N > 0 is a gap of N frames (the
    first ones lost: before this rule they were counted nowhere). Forward jumps are gaps; a repeat of
    a recently seen number is a duplicate (dropped); a small step back to an unseen number is a late
    frame (kept, counted); a new acquisition id, seq 0 again, or a large step back is a restart (a
    bridge or detector that came back).

    With ``ts`` given, a number not above the newest seen is a restart too when its ``ts`` does not fit
    the series (``SeqTimes``): a number seen before with another ``ts`` (earlier or later, by more than
    ``TS_TOLERANCE_S``: a retransmission may come back rounded), or an unseen
    one whose ``ts`` would make the series' ``ts`` go backwards. Why: instances sharing a PUSH stream each
    get every N-th frame, so after a bridge restart re-using the acquisition id only one of them sees seq
    0 again; the others saw the new numbers as duplicates (dropped: raw frames never recorded) or as late
    frames (appended to the old series' part). The rule was "``ts`` later than every frame so far", which
    failed for a sender whose clock was corrected backwards before it restarted. A true duplicate has the
    same ``ts``, a late frame one between its neighbours'; a constant (or zero) ``ts`` always fits, so
    such a sender is classified by the other rules only, as before.
    """

    def __init__(self, reorder_window: int = 1024, late_start: LateStartNotice | None = None) -> None:
        self.window = reorder_window
        self.late_start = late_start or LateStartNotice()
        self.acq: str | None = None
        self.last = -1
        self.times = SeqTimes(reorder_window)  # the recent numbers taken, with their ts
        self.gaplog: GapLog | None = None  # made at the first gap within a series
        self.jumped = False  # a jump past MAX_GAP was logged for this acquisition

    def reset(self, acq: str | None = None) -> None:
        self.flush_gaps()  # the old series' summed-up gaps are said before the new one's
        if acq != self.acq:  # another acquisition: its own jump warning (a restart within one keeps it)
            self.jumped = False
        self.acq, self.last = acq, -1
        self.times.clear()

    def flush_gaps(self) -> None:
        """Log the gaps summed up since the last line, and start the next series' log afresh."""
        if self.gaplog is not None:
            self.gaplog.flush(time.monotonic())
            self.gaplog = None

    def _log_gap(self, acq: str, first: int, last: int) -> None:
        """A gap in the middle of a series (a late first frame is ``LateStartNotice``'s)."""
        if self.gaplog is None:
            self.gaplog = GapLog(f"acquisition {acq}", INPUT_GAP_LOG_EVERY_S, "input", _GAP_HINT, log)
        self.gaplog.gap("", first, last, time.monotonic())

    @property
    def last_ts(self) -> float | None:
        """The ``ts`` of the last number (remembered for an evicted acquisition)."""
        return self.times.ts(self.last)

    def observe(self, acq: str, seq: int, ts: float | None = None) -> tuple[SeqEvent, int]:
        """Classify one frame; returns (event, number of missing frames: a gap, or a late first frame)."""
        event, missing = self._classify(acq, seq, ts)
        if self.gaplog is not None:
            self.gaplog.tick(time.monotonic())
        return event, missing

    def _jump(self, acq: str, seq: int) -> bool:
        """A number more than ``MAX_GAP`` past the last (or past -1): logged once per acquisition."""
        if seq - self.last - 1 <= MAX_GAP:
            return False
        if not self.jumped:
            self.jumped = True
            log.warning(
                "acquisition %s: seq %d is more than %d past the last number (%d): taken as the sender's own "
                "numbering, not as frames lost (nothing counted in sbd_frames_missing_total; a restart). "
                "Number frames from 0 (docs/wire-format.md); logged once per acquisition",
                acq, seq, MAX_GAP, self.last,
            )  # fmt: skip
        return True

    def _classify(self, acq: str, seq: int, ts: float | None) -> tuple[SeqEvent, int]:
        if self.acq is not None and acq != self.acq:
            self.reset(acq)
            jump = self._jump(acq, seq)
            self.times.add(seq, ts)
            self.last = seq
            if seq > 0 and not jump:
                self.late_start(acq, seq)
            return SeqEvent.restart, 0 if jump else seq  # frames 0 .. seq - 1 of the new acquisition: lost
        self.acq = acq
        if seq == self.last + 1:  # ``last`` is -1 before the first frame: numbering starts at 0
            self.times.add(seq, ts)
            self.last = seq
            return SeqEvent.ok, 0
        if self._jump(acq, seq):  # a numbering of its own: a restart past -1 is its first frame
            first = self.last < 0
            self.reset(acq)
            self.times.add(seq, ts)
            self.last = seq
            return (SeqEvent.ok if first else SeqEvent.restart), 0
        if seq > self.last + 1:
            if self.last < 0:
                self.late_start(acq, seq)
            else:
                self._log_gap(acq, self.last + 1, seq - 1)
            missing = seq - self.last - 1
            self.times.add(seq, ts)
            self.last = seq
            return SeqEvent.gap, missing
        if (seq == 0 and self.last > 0) or self.last - seq > self.window or not self.times.fits(seq, ts):
            self.reset(acq)
            self.times.add(seq, ts)
            self.last = seq
            return SeqEvent.restart, 0
        if seq in self.times:
            return SeqEvent.duplicate, 0
        self.times.add(seq, ts)
        return SeqEvent.out_of_order, 0


class AcquisitionSequences:
    """Sequence accounting per acquisition: one ``SequenceTracker`` per acquisition id.

    Two acquisitions interleaved on one stream (two detectors behind one bridge, A0 B0 A1 B1 ...) are
    each continuous; one tracker for the stream saw every frame as a new acquisition (a restart) and so
    counted no gap or duplicate at all. The first frame of an acquisition not seen before is a restart
    when another one is running (as before); going back to a remembered one continues its numbering.
    The ``max_acqs`` most recently active acquisitions are tracked in full (each holds its reorder
    window). Past that the least recently active one is evicted, but its last number and that one's ``ts``
    are remembered (``remember`` of them, a few dozen bytes each): with 80 acquisitions round-robin,
    each one's next frame was taken for a new acquisition starting late, inventing 2240 missing frames
    and a warning blaming the sender. Such a one continues its numbering; only a repeat of a number it
    had before its last is no longer told from a late frame (kept, not dropped). Eviction is logged
    (rate-limited).
    """

    def __init__(
        self, reorder_window: int = 1024, max_acqs: int = 64, remember: int = REMEMBER_EVICTED
    ) -> None:
        self.window, self.max_acqs, self.remember = reorder_window, max_acqs, remember
        self.late_start = LateStartNotice()  # one for the stream: the first late start says why
        self._trackers: collections.OrderedDict[str, SequenceTracker] = collections.OrderedDict()
        self._evicted: collections.OrderedDict[str, tuple[int, float | None]] = collections.OrderedDict()
        self._evict_log = RateLimitedLog(log)
        self._ticked = time.monotonic()

    @property
    def running(self) -> bool:
        """Has any acquisition been seen (started or with frames)?"""
        return bool(self._trackers)

    def _get(self, acq: str) -> tuple[SequenceTracker, bool]:
        t = self._trackers.pop(acq, None)
        fresh = t is None
        if t is None:
            t = SequenceTracker(self.window, self.late_start)
            kept = self._evicted.pop(acq, None)
            if kept is not None:  # evicted while still active: it goes on where it was
                t.acq, (t.last, last_ts), fresh = acq, kept, False
                t.times.add(t.last, last_ts)  # its last number again is still a duplicate
        self._trackers[acq] = t  # the most recent last
        while len(self._trackers) > self.max_acqs:
            self._evict(*self._trackers.popitem(last=False))
        return t, fresh

    def _evict(self, acq: str, t: SequenceTracker) -> None:
        t.flush_gaps()
        self._evicted[acq] = (t.last, t.last_ts)
        while len(self._evicted) > self.remember:
            self._evicted.popitem(last=False)  # forgotten: its next frame counts as a new acquisition
        self._evict_log.log(
            "evict",
            logging.WARNING,
            "acquisitions moved out of full sequence tracking",
            "more than %d acquisitions active on this input: %s, the least recently active, is no longer "
            "tracked in full; its numbering is remembered (up to %d such acquisitions), so its next "
            "frame continues it, but a repeat of an earlier number of it is kept as a late frame instead of "
            "dropped as a duplicate (sbd_frames_out_of_order_total)",
            self.max_acqs,
            acq,
            self.remember,
        )

    def start(self, acq: str) -> None:
        """``series_start``: this acquisition's numbering starts afresh."""
        self._get(acq)[0].reset(acq)

    def observe(self, acq: str, seq: int, ts: float | None = None) -> tuple[SeqEvent, int]:
        t, fresh = self._get(acq)
        event, missing = t.observe(acq, seq, ts)
        self._tick()
        if fresh and len(self._trackers) > 1:
            return SeqEvent.restart, missing  # a new acquisition beside (or after) another one
        return event, missing

    def _tick(self) -> None:
        """Once a second: the summed-up gap lines of acquisitions that got no frame since are due too."""
        now = time.monotonic()
        if now - self._ticked < 1.0:
            return
        self._ticked = now
        for t in self._trackers.values():
            if t.gaplog is not None:
                t.gaplog.tick(now)
        self._evict_log.tick(now)


def count_sequence_event(m: Metrics, event: SeqEvent, missing: int) -> bool:
    """Count what a frame's sequence number revealed; False for a duplicate, which is dropped.

    A restart may also miss frames (a new acquisition whose first frame is not 0): both are counted.
    """
    if event is SeqEvent.duplicate:
        m.frames_duplicate.inc()
        return False
    if event is SeqEvent.restart:
        m.restarts.inc()
    elif event is SeqEvent.out_of_order:
        m.frames_out_of_order.inc()
    if missing > 0 and event in (SeqEvent.gap, SeqEvent.restart):
        m.gaps.inc()
        m.frames_gap.inc(missing)
    return True
