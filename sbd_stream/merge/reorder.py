"""Merge the published streams of several ``serve`` instances into one stream, in frame order.

Scale-out (docs/scale-out-nodes.md): a detector that PUSHes (a DECTRIS DCU, or ``sbd-stream emulate
--push``) hands each frame to exactly one of the ``serve`` instances PULLing from it, round-robin. Each
instance denoises, records and publishes its share under the frames' own numbers (``acq``, ``seq``).
This module puts the shares back together:

* ``ReorderBuffer`` is pure (no sockets, no clock of its own; tests drive it with ``now``). Per
  acquisition id and topic (``denoised``, ``llr``) it releases frames in ``seq`` order. A ``seq``
  that has not come is declared missing (a *gap*, counted and logged once per contiguous range) when
  more than ``window`` later frames are waiting, or when the oldest waiting frame has waited
  ``gap_timeout_s``. A frame seen twice is dropped (duplicate); a frame that arrives after its number
  was declared missing is dropped as *late* (the instance's recording still has it). ``series_start``
  is forwarded once, before the acquisition's frames (they wait for it up to ``gap_timeout_s``;
  an acquisition whose frames go without one, the merge having joined it mid-series, is counted as
  ``joined`` and logged once with the first number seen);
  ``series_end`` is forwarded once, after every earlier frame was released or declared missing: it
  waits until ``gap_timeout_s`` passed without a frame of its acquisition (other instances'
  stragglers), or less when the end says how many frames the series had (``frames_expected``).
  A sender that restarts re-using an acquisition id (a bridge that crashed without ``series_end``)
  starts the acquisition anew: a new ``series_start`` (not a ``meta.joined`` / ``meta.resumed``
  re-announcement, nor a copy of the one taken: ``streams.same_start``) after frames went out, or a
  frame whose number came already (went out, was declared missing, or is still held: waiting for its
  start or behind a gap) but whose ``ts`` does not fit the series (``sources/seqtimes.py``: the same
  number with another ``ts``, or a ``ts`` that would go backwards). The old series' held frames go
  out, its holes become gaps and its ``series_end`` goes out (made up, ``end_reason = "restarted"``,
  when the sender sent none) before the new series' start (``restarts`` counts them); the old
  series' frames still on their way are told by its ``seq -> ts`` (``streams.OldSeries``) and dropped
  as late.
* ``MergeService`` SUB-connects to every instance's publisher, feeds the buffer and republishes on
  one PUB socket, with its own Prometheus registry (``sbd_merge_*``), under a ``Supervisor``:
  a malformed message is counted by reason and logged once per reason, a message whose handling
  raises is counted and set aside, and a loop that dies is restarted.
* ``run_merge`` is what ``sbd-stream merge`` (``sbd_stream/cli/merge.py``) runs until stopped.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sbd_stream.merge.streams import SAME_START_S, AcqState, OldSeries, Stream
from sbd_stream.protocol import (
    TOPIC_DENOISED,
    TOPIC_LLR,
    TOPIC_SERIES_END,
    TOPIC_SERIES_START,
)
from sbd_stream.sources.seqtimes import same_ts
from sbd_stream.sources.sequence import MAX_GAP  # the input's rule: a bigger jump is no loss

__all__ = ["DEFAULT_GAP_TIMEOUT_S", "DEFAULT_WINDOW", "Released", "ReorderBuffer"]

log = logging.getLogger(__name__)

DEFAULT_WINDOW = 64
"""Frames of one stream held behind a missing one before it is declared missing (bounds memory)."""
DEFAULT_GAP_TIMEOUT_S = 2.0
"""How long a frame may wait for a missing earlier one; also the wait for series_start / stragglers."""
MAX_OPEN_ACQS = 64  # acquisitions with state; past this the least recently active one is flushed
REMEMBER_CLOSED = 256  # ended acquisitions remembered (with their ts span): stragglers count as late
OUTPUT_TOPICS = frozenset({TOPIC_DENOISED, TOPIC_LLR})


@dataclass(frozen=True)
class Released:
    """One message the buffer lets out, in order. ``seq`` is -1 for series messages.

    ``merged`` is set on a ``series_end`` only: what the merge saw of the acquisition
    (``frames`` released per topic, ``missing`` per topic), for the outgoing end message. Its
    ``payload`` is None when the sender sent no end (a restart closed the series): the service
    makes one up.
    """

    topic: bytes
    acq: str
    seq: int
    payload: Any
    merged: dict[str, Any] | None = None


class ReorderBuffer:
    """Per acquisition and topic, frames in ``seq`` order; gaps, duplicates and late frames counted.

    Every method takes ``now`` (seconds, any monotonic clock) and returns what may go out, in order.
    ``on_count(kind, topic, n)`` is told every count as it happens (the service feeds Prometheus from
    it); ``stats`` keeps the totals, keyed ``(kind, topic)``. Kinds: ``frames``, ``gaps``,
    ``missing``, ``duplicates``, ``late``, ``series``, ``series_dropped``, ``restarts``, and
    ``joined`` (topic ``series_start``: an acquisition whose frames went out without a start).

    ``ts`` (the message header's) is optional: without it, or with a sender's constant ``ts``, no
    restart is told from a duplicate (a repeated ``series_start`` is dropped, a repeated number too).
    """

    def __init__(
        self,
        window: int = DEFAULT_WINDOW,
        gap_timeout_s: float = DEFAULT_GAP_TIMEOUT_S,
        first_seq: int | None = None,
        on_count: Callable[[str, str, int], None] | None = None,
    ) -> None:
        if window < 0 or gap_timeout_s < 0:
            raise ValueError("window and gap_timeout_s must be >= 0")
        self.window, self.gap_timeout_s, self.first_seq = window, gap_timeout_s, first_seq
        self.on_count = on_count
        self.stats: collections.Counter[tuple[str, str]] = collections.Counter()
        self.acqs: dict[str, AcqState] = {}
        self.closed: collections.OrderedDict[str, OldSeries | None] = collections.OrderedDict()  # its seq->ts
        self._evicted: list[Released] = []  # what flushing an evicted acquisition released

    # --- input -------------------------------------------------------------------------------------
    def push_frame(
        self, topic: bytes, acq: str, seq: int, payload: Any, now: float, ts: float | None = None
    ) -> list[Released]:
        """One frame from any instance; returns what is now in order."""
        return self._take(self._push_frame(topic, acq, seq, payload, now, ts))

    def push_series(
        self, topic: bytes, acq: str, payload: Any, meta: dict[str, Any] | None, now: float,
        ts: float | None = None,
    ) -> list[Released]:  # fmt: skip
        """A ``series_start`` / ``series_end`` from any instance; each is forwarded once per series."""
        return self._take(self._push_series(topic, acq, payload, meta, now, ts))

    def _take(self, out: list[Released]) -> list[Released]:
        if self._evicted:
            out, self._evicted = self._evicted + out, []
        return out

    def _push_frame(
        self, topic: bytes, acq: str, seq: int, payload: Any, now: float, ts: float | None
    ) -> list[Released]:
        t = topic.decode()
        out: list[Released] = []
        if acq in self.closed:
            old = self.closed[acq]
            if ts is None or old is None or old.holds(seq, ts):
                self._count("late", t)
                log.debug("merge: frame %s of %s arrived after its series ended: dropped as late", seq, acq)
                return []
            del self.closed[acq]  # outside the ended series' ts: its sender restarted, without a start
            self._count("restarts", t)
            log.warning(
                "merge: %s frame %d does not fit its ended series (ts): %s starts anew", acq, seq, acq
            )
            self._acq(acq, now).floor = old
        a = self._acq(acq, now)
        st = a.streams.get(topic)
        again = st is not None and seq in st.times and st.times.fits(seq, ts)  # this series' frame again
        fits_new = st is None or st.times.fits(seq, ts)
        if not again and a.floor is not None and ts is not None and a.floor.holds(seq, ts, fits_new):
            self._count("late", t)  # a straggler of the series a restart closed (its seq -> ts fits)
            return out
        if st is not None and st.seen(seq) and not st.times.fits(seq, ts):  # held counts, not only gone out
            out, a = self._restart(a, t, now, f"frame {seq} came already and its ts does not fit", True)
            st = None
        a.last_frame = now
        if st is None:
            st = a.streams.setdefault(topic, Stream(self.first_seq, self.first_seq))
        if st.next is not None and seq < st.next:
            if (st.anchor is not None and seq < st.anchor) or st.was_missing(seq):
                self._late(a, t, seq)
            else:
                self._count("duplicates", t)
            return out
        if seq in st.buf:
            self._count("duplicates", t)
            return out
        st.hold(seq, now, payload, ts)
        a.took(seq, ts)
        return out + self._advance(a, now)

    def _push_series(
        self, topic: bytes, acq: str, payload: Any, meta: dict[str, Any] | None, now: float, ts: float | None
    ) -> list[Released]:
        t = topic.decode()
        again = bool((meta or {}).get("joined") or (meta or {}).get("resumed"))  # an instance's own
        if acq in self.closed and topic == TOPIC_SERIES_START:
            old = self.closed[acq]
            if not again and old is not None and old.same_start(ts, meta):
                self._count("series_dropped", t)  # a copy of the ended series' start, forwarded late
                return []
            del self.closed[acq]  # a restarted sender re-using the id
            self._acq(acq, now).floor = old
        if acq in self.closed:
            self._count("series_dropped", t)
            return []
        a = self._acq(acq, now)
        if topic == TOPIC_SERIES_START:
            out: list[Released] = []
            if not again and self._restarted_by(a, ts, meta):
                out, a = self._restart(a, t, now, "another series_start came after frames went out", False)
            elif a.started:  # a re-announcement, or the start another instance forwarded too
                if not again and a.start_ts is None and a.start_meta is None:
                    a.start_ts, a.start_meta = ts, meta  # the sender's own: another one after frames restarts
                elif not again and ts is not None and a.start_ts is not None and not same_ts(ts, a.start_ts):
                    if a.maybe_start is not None:
                        self._count("series_dropped", t)
                    a.maybe_start = (payload, ts, meta, now)  # a copy; or a quick restart its frames tell
                    return []
                self._count("series_dropped", t)
                return []
            a.started = True
            if not again:
                a.start_ts, a.start_meta = ts, meta
            self._count("series", t)
            return [*out, Released(topic, acq, -1, payload), *self._advance(a, now)]
        if a.end is not None:
            self._count("series_dropped", t)
            return []
        a.end, a.end_at = payload, now
        expected = (meta or {}).get("frames_expected")
        if isinstance(expected, int) and not isinstance(expected, bool) and expected >= 0:
            a.expected = expected
        if not a.started:  # the end came before any start: let the frames go without one
            self._without_start(a, "before its series_end")
        return self._advance(a, now)

    def poll(self, now: float) -> list[Released]:
        """Act on time: declare overdue gaps, send ends whose wait is over."""
        out: list[Released] = []
        for a in list(self.acqs.values()):
            out += self._advance(a, now)
        return out

    def flush(self, now: float) -> list[Released]:
        """Release everything held (a stop): remaining holes become gaps; pending ends go out."""
        out: list[Released] = []
        for a in list(self.acqs.values()):
            out += self._drain(a, now, close=a.end is not None)
        return out

    @property
    def buffered(self) -> int:
        return sum(len(st.buf) for a in self.acqs.values() for st in a.streams.values())

    def total(self, kind: str) -> int:
        return sum(n for (k, _t), n in self.stats.items() if k == kind)

    # --- internals ---------------------------------------------------------------------------------
    @staticmethod
    def _restarted_by(a: AcqState, ts: float | None, meta: dict[str, Any] | None) -> bool:
        """A sender's second ``series_start`` of ``a``, not a copy of the one taken, after frames went out.

        The same start forwarded by several instances has the same ``meta`` and a ``ts`` at most
        ``SAME_START_S`` apart (each instance stamps its own receive time when the sender sent none):
        dropped, as before (``streams.same_start``). Otherwise earlier counts as much as later: a sender
        whose clock was corrected backwards restarts too."""
        return (
            ts is not None
            and a.start_ts is not None
            and not a.same_start(ts, meta)
            and a.started
            and a.output_began()
        )

    def _restart(
        self, a: AcqState, topic: str, now: float, why: str, by_frame: bool
    ) -> tuple[list[Released], AcqState]:
        """Close ``a`` (holes become gaps, its end goes out) and open it anew; returns (released, new).

        Frames of the old series still on their way (their ``seq -> ts`` fits it, ``OldSeries.holds``)
        are its stragglers, dropped as late, not the new series' frames (``by_frame``: told by a frame's
        ``ts`` rather than by a new ``series_start``; both keep the old series)."""
        log.warning("merge: %s starts anew (%s): its sender restarted re-using the id", a.acq, why)
        self._count("restarts", topic)
        pending, a.maybe_start = a.maybe_start, None  # a series_start taken for a copy of the first
        out = self._drain(a, now, close=True, made_up_end=True)
        old = self.closed.pop(a.acq, None)
        new = self._acq(a.acq, now)
        new.floor = old
        if pending is not None and by_frame and now - pending[3] <= max(self.gap_timeout_s, SAME_START_S):
            new.started, new.start_ts, new.start_meta = (
                True,
                pending[1],
                pending[2],
            )  # its own start after all
            self._count("series", TOPIC_SERIES_START.decode())
            out.append(Released(TOPIC_SERIES_START, a.acq, -1, pending[0]))
        elif pending is not None:
            self._count("series_dropped", TOPIC_SERIES_START.decode())
        return out, new

    def _count(self, kind: str, topic: str, n: int = 1) -> None:
        self.stats[(kind, topic)] += n
        if self.on_count is not None:
            self.on_count(kind, topic, n)

    def _late(self, a: AcqState, topic: str, seq: int) -> None:
        self._count("late", topic)
        if not a.late_logged:
            a.late_logged = True
            log.warning(
                "merge: %s %s frame %d arrived after it was declared missing: dropped (late); "
                "raise --gap-timeout / --window if an instance lags this much (logged once per acquisition)",
                a.acq,
                topic,
                seq,
            )

    def _acq(self, acq: str, now: float) -> AcqState:
        a = self.acqs.get(acq)
        if a is None:
            if len(self.acqs) >= MAX_OPEN_ACQS:  # bounded: the least recently active one is flushed
                oldest = min(self.acqs.values(), key=lambda x: max(x.last_frame, x.end_at))
                log.warning("merge: more than %d acquisitions open; flushing %s", MAX_OPEN_ACQS, oldest.acq)
                self._evicted.extend(self._drain(oldest, now, close=True))
            a = self.acqs[acq] = AcqState(acq, now, now)
        return a

    def _gate_open(self, a: AcqState, now: float) -> bool:
        """Frames wait for their series_start (forwarded first), up to the gap timeout or window."""
        if a.started:
            return True
        held = sum(len(st.buf) for st in a.streams.values())
        if now - a.first_seen >= self.gap_timeout_s:
            self._without_start(a, f"within {self.gap_timeout_s:.1f} s")
            return True
        if held > self.window:
            self._without_start(a, f"before {held} of its frames waited")
            return True
        return False

    def _without_start(self, a: AcqState, why: str) -> None:
        """Let ``a``'s frames go without a ``series_start``: counted (``joined``) and logged once.

        The merge joined the series mid-way (it subscribed after the sender's start: a PUB drops what
        it sends before a subscription reaches it) or the start was lost. The first number is learnt
        from what came, so the frames before it are in no gap count: the line names them instead."""
        a.started = True
        self._count("joined", TOPIC_SERIES_START.decode())
        seen = [min(st.buf) for st in a.streams.values() if st.buf]
        first = min(seen) if seen else None
        lo = self.first_seq or 0
        if first is None:
            where, unseen = "before any frame", "series_start"
        elif first > lo:
            where, unseen = f"at seq {first}", f"series_start and frames {lo}-{first - 1}"
        else:
            where, unseen = f"at seq {first}", "series_start"
        log.warning(
            "merge: no series_start for %s %s: joined it mid-series %s, %s not seen (published before the "
            "merge subscribed? start the merge before the detector sends); forwarding its frames without "
            "one (logged once per acquisition, counted in sbd_merge_joined_midseries_total)",
            a.acq, why, where, unseen,
        )  # fmt: skip

    def _advance(self, a: AcqState, now: float) -> list[Released]:
        out: list[Released] = []
        if not self._gate_open(a, now):
            return out
        for topic, st in a.streams.items():
            out += self._release(a, topic, st, now, final=False)
        if a.end is not None and self._end_due(a, now):
            out += self._drain(a, now, close=True)
        a.gaplog.tick(now)
        return out

    def _end_due(self, a: AcqState, now: float) -> bool:
        if now - max(a.end_at, a.last_frame) >= self.gap_timeout_s:
            return True
        if a.expected is None:
            return False
        if a.expected > 0 and not a.streams:  # every frame is still on its way
            return False
        return all(not st.buf and st.next is not None and st.next >= a.expected for st in a.streams.values())

    def _release(self, a: AcqState, topic: bytes, st: Stream, now: float, final: bool) -> list[Released]:
        out: list[Released] = []
        if not st.buf:
            return out
        overdue = final or len(st.buf) > self.window or now - st.oldest() >= self.gap_timeout_s
        if st.next is None:  # the first number is the lowest seen once 0 came or waiting is over
            lo = min(st.buf)
            if lo != 0 and not overdue:
                return out
            st.next = st.anchor = lo
        t = topic.decode()
        while st.buf:
            if st.next in st.buf:
                _arrived, payload = st.buf.pop(st.next)
                out.append(Released(topic, a.acq, st.next, payload))
                st.released += 1
                self._count("frames", t)
                st.next += 1
                continue
            if not (final or len(st.buf) > self.window or now - st.oldest() >= self.gap_timeout_s):
                break
            lo = min(st.buf)
            self._gap(a, t, st, st.next, lo - 1, now)
            st.next = lo
        return out

    def _gap(self, a: AcqState, topic: str, st: Stream, first: int, last: int, now: float) -> None:
        n = last - first + 1
        if n <= 0:
            return
        said = n > MAX_GAP and any(y - x >= MAX_GAP for s in a.streams.values() for x, y in s.missing)
        st.missing.append((first, last))  # a frame of it that comes after all is late, not a duplicate
        if n > MAX_GAP:  # the sender's own numbering, as at the input: a 2^63 - 2 poisoned the float counter
            msg = "merge: %s %s: frames %d-%d not counted missing: a jump past %d is the sender's numbering"
            log.log(logging.DEBUG if said else logging.WARNING, msg + " (logged once per acquisition)",
                    a.acq, topic, first, last, MAX_GAP)  # fmt: skip
            return
        st.n_missing += n
        self._count("gaps", topic)
        self._count("missing", topic, n)
        a.gaplog.gap(topic, first, last, now)  # the first at once, later ones summed up

    def _drain(self, a: AcqState, now: float, close: bool, made_up_end: bool = False) -> list[Released]:
        """Release every held frame of ``a`` (holes become gaps); with ``close`` also its end.

        ``made_up_end``: send an end (payload None) even if the sender sent none (a restart)."""
        out: list[Released] = []
        if not a.started:
            if any(st.buf for st in a.streams.values()):  # frames held, still waiting for their start
                self._without_start(a, "before the merge flushed it")
            a.started = True
        for topic, st in a.streams.items():
            out += self._release(a, topic, st, now, final=True)
            if close and a.expected is not None and st.next is not None and st.next < a.expected:
                self._gap(a, topic.decode(), st, st.next, a.expected - 1, now)  # the tail never came
                st.next = a.expected
        a.gaplog.flush(now)
        if not close:
            return out
        if a.maybe_start is not None:  # it was a copy of the start after all
            a.maybe_start = None
            self._count("series_dropped", TOPIC_SERIES_START.decode())
        if a.end is not None or made_up_end:
            merged = {
                "frames": {t.decode(): st.released for t, st in a.streams.items()},
                "missing": {t.decode(): st.n_missing for t, st in a.streams.items()},
            }
            out.append(Released(TOPIC_SERIES_END, a.acq, -1, a.end, merged))
            self._count("series", TOPIC_SERIES_END.decode())
        self.acqs.pop(a.acq, None)
        self.closed[a.acq] = a.old_series()
        while len(self.closed) > REMEMBER_CLOSED:
            self.closed.popitem(last=False)
        return out
