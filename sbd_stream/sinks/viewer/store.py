"""What the viewer keeps: the newest frame per kind, rings of recent frames, and latencies it measured.

The denoised frame of a given seq arrives a latency later than its raw frame; keeping the raw frames of
that interval lets the page show all panels for the same frame. Everything here is O(1) per frame and
holds references to received buffers, never copies, because ``offer`` runs on the pipeline's ingest
thread (raw tap) and on the viewer's subscriber thread.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from sbd_stream.protocol import FrameHeader

KINDS = ("raw", "denoised", "llr")
LATENCY_WINDOW_S = 5.0
"""Latency quantiles on the page are over the frames received in the last few seconds."""


@dataclass
class Shown:
    header: FrameHeader
    data: np.ndarray
    t: float  # time.time() at receipt
    via_lane: str | None = None  # the lane its path implies, when its header names none (``lane``)

    @property
    def latency_s(self) -> float:
        """Sender timestamp (detector / emulator clock) to our receipt, on the same machine's clock."""
        return self.t - self.header.ts

    @property
    def lane(self) -> str | None:
        """The pipeline lane that produced this output: ``meta.lane`` if the sender names one, else the
        lane its path implies (``via_lane``: the service publishes only its live lane, server.py)."""
        lane = self.header.meta.get("lane") if isinstance(self.header.meta, dict) else None
        return str(lane) if lane is not None else self.via_lane


def quantile(values: list[float], q: float) -> float | None:
    """Plain empirical quantile (no histogram buckets: the viewer has every sample of its window)."""
    if not values:
        return None
    return float(np.quantile(np.asarray(values, np.float64), q))


class FrameStore:
    """Newest frame per kind plus rings of recent frames, bounded in bytes and in count.

    ``newest`` never goes back in time within one series: an output with a lower seq than the one
    shown (e.g. a frame completed afterwards by a "complete" lane) is kept in the ring and counted in
    the latency of its lane, but does not replace the newer frame on the page.

    An acquisition id can be re-armed (a new ``series_start``) or its sender restarted, and both count
    ``seq`` from 0 again (docs/wire-format.md, sequence accounting). Comparing numbers across the two
    series kept the old series' last frame "newest" until the new one passed it, and made ``seq=N``
    ambiguous. So a frame of ``kind`` starts a new series of its acquisition when (``_new_series``):
    a ``series_start`` of it came before it on the same stream (``series_start(kinds=...)``), the
    service marked it a restart (``restart``: ``Frame.seq_restart`` on the raw tap), or, as the service's
    own accounting, its number is not above the newest of that series but its ``ts`` is later (or it is
    ``seq`` 0 again with no earlier ``ts``): a late or completed frame has an earlier ``ts``. The new
    series' first frame becomes ``newest`` and the old series' frames of that kind and acquisition are
    dropped from the ring, so ``seq=N`` always means the current series.
    """

    MAX_RING = 512
    MAX_ACQS = 64
    """Acquisitions whose newest header, pending ``series_start`` and start times are remembered (LRU):
    the service itself tracks at most 64 active ones (docs/wire-format.md)."""
    TS_SAME_S = 1e-3
    """Two ``ts`` within 1 ms are the same, as in the service's sequence accounting (rounded retransmits)."""

    def __init__(self, raw_ring_bytes: float = 256e6, output_ring_bytes: float = 64e6) -> None:
        self._lock = threading.Lock()
        self._newest: dict[str, Shown] = {}
        self._rings: dict[str, collections.deque[Shown]] = {k: collections.deque() for k in KINDS}
        self._ring_bytes = dict.fromkeys(KINDS, 0)
        self._limit = {"raw": raw_ring_bytes, "denoised": output_ring_bytes, "llr": output_ring_bytes}
        self._times: dict[str, collections.deque[float]] = {k: collections.deque(maxlen=32) for k in KINDS}
        # (receipt time, latency) per (kind, lane); bounded so a 400 Hz stream costs the same memory
        self._lat: dict[tuple[str, str], collections.deque[tuple[float, float]]] = {}
        self.received = dict.fromkeys(KINDS, 0)
        self.series: dict[str, Any] = {}
        # per kind and acquisition: the header with the highest seq of its current series (headers only,
        # never pixels: 64 K2 frames would be 1.8 GB), and acquisitions whose series_start came on that
        # kind's stream with no frame after it yet
        self._last: dict[str, collections.OrderedDict[str, FrameHeader]] = {
            k: collections.OrderedDict() for k in KINDS
        }
        self._pending: dict[str, collections.OrderedDict[str, None]] = {
            k: collections.OrderedDict() for k in KINDS
        }
        self._starts: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()

    def _remember(self, d: collections.OrderedDict[str, Any], acq: str, value: Any) -> None:
        d[acq] = value
        d.move_to_end(acq)
        while len(d) > self.MAX_ACQS:
            d.popitem(last=False)

    def series_start(self, acq: str, ts: float, meta: dict[str, Any], kinds: tuple[str, ...]) -> None:
        """A ``series_start`` of ``acq`` received on the stream that carries ``kinds``: their next frame of
        ``acq`` starts a new series. Only the kinds of that stream: a series_start on the service's
        output is ordered with its outputs but reaches the viewer after the raw frames already tapped."""
        with self._lock:
            self.series = {"acq": acq, "ts": ts, "meta": meta}
            starts = self._starts.get(acq) or collections.deque(maxlen=8)
            if ts not in starts:  # the same series_start on both streams of a stand-alone viewer
                starts.append(ts)
            self._remember(self._starts, acq, starts)
            for k in kinds:
                self._remember(self._pending[k], acq, None)

    def series_t0(self, acq: str, ts: float) -> float | None:
        """``ts`` of the latest ``series_start`` of ``acq`` not later than ``ts`` (None: none known), so
        a frame is never timed from a series that started after it."""
        with self._lock:
            starts = [t for t in self._starts.get(acq, ()) if t <= ts]
        return max(starts) if starts else None

    def _new_series(self, kind: str, header: FrameHeader, restart: bool) -> bool:
        """Does this frame start a new series of its acquisition for ``kind``? (class docstring)"""
        pending = header.acq in self._pending[kind]
        self._pending[kind].pop(header.acq, None)
        last = self._last[kind].get(header.acq)
        if pending or restart:
            return True
        if last is None or header.seq > last.seq:
            return False
        if header.ts > last.ts + self.TS_SAME_S:  # a number not above the newest, stamped later
            return True
        return header.seq == 0 < last.seq and header.ts >= last.ts - self.TS_SAME_S  # seq 0 again

    def offer(
        self,
        kind: str,
        header: FrameHeader,
        data: np.ndarray,
        lane: str | None = None,
        restart: bool = False,
    ) -> None:
        """Keep a received frame; ``lane``: the lane its path implies when its header names none;
        ``restart``: the service found it restarting its acquisition's numbering (``Frame.seq_restart``)."""
        s = Shown(header, data, time.time(), lane)
        with self._lock:
            new = self._new_series(kind, header, restart)
            if new:
                self._forget(kind, header.acq)
            last = self._last[kind].get(header.acq)
            if last is None or header.seq >= last.seq:
                self._remember(self._last[kind], header.acq, header)
            cur = self._newest.get(kind)
            if cur is None or cur.header.acq != header.acq or new or header.seq >= cur.header.seq:
                self._newest[kind] = s
            self.received[kind] += 1
            self._times[kind].append(s.t)
            lat = self._lat.get((kind, s.lane or ""))
            if lat is None:
                lat = self._lat[(kind, s.lane or "")] = collections.deque(maxlen=2048)
            lat.append((s.t, s.latency_s))
            ring = self._rings[kind]
            ring.append(s)
            self._ring_bytes[kind] += data.nbytes
            while len(ring) > 1 and (self._ring_bytes[kind] > self._limit[kind] or len(ring) > self.MAX_RING):
                self._ring_bytes[kind] -= ring.popleft().data.nbytes

    def _forget(self, kind: str, acq: str) -> None:
        """Drop the frames of ``acq``'s earlier series from ``kind``'s ring (a new series began): their
        numbers repeat in the new one, and the recording keeps them (in a part of their own)."""
        self._last[kind].pop(acq, None)
        ring = self._rings[kind]
        if any(s.header.acq == acq for s in ring):
            kept = [s for s in ring if s.header.acq != acq]
            self._rings[kind] = collections.deque(kept)
            self._ring_bytes[kind] = sum(s.data.nbytes for s in kept)

    def newest(self, kind: str) -> Shown | None:
        with self._lock:
            return self._newest.get(kind)

    def frame_for(self, kind: str, acq: str, seq: int) -> Shown | None:
        """Frame ``(acq, seq)`` of ``kind`` if still kept, else None (the caller decides what stands in)."""
        with self._lock:
            for s in reversed(self._rings[kind]):
                if s.header.seq == seq and s.header.acq == acq:
                    return s
            return None

    def held(self, kind: str, acq: str) -> tuple[int, int] | None:
        """Lowest and highest ``seq`` of ``acq`` still kept for ``kind`` (None: none), for a 404's reason."""
        with self._lock:
            seqs = [s.header.seq for s in self._rings[kind] if s.header.acq == acq]
        return (min(seqs), max(seqs)) if seqs else None

    def rate(self, kind: str) -> float:
        with self._lock:
            t = list(self._times[kind])
        if len(t) < 2 or time.time() - t[-1] > 2.0:
            return 0.0
        return (len(t) - 1) / max(t[-1] - t[0], 1e-9)

    def interval(self, kind: str) -> float | None:
        """Mean time between the last frames of ``kind`` received (s; None with fewer than two): the
        stream's own frame period, also once it stopped (``rate`` is 0 then), for ``frameinfo.freshness``."""
        with self._lock:
            t = list(self._times[kind])
        return (t[-1] - t[0]) / (len(t) - 1) if len(t) >= 2 else None

    def latency(self, window_s: float = LATENCY_WINDOW_S) -> dict[str, dict[str, Any]]:
        """Per ``kind`` or ``kind/lane``: p50 / p90 / p99 / max of sender ts -> receipt, last ``window_s``."""
        now = time.time()
        with self._lock:
            items = [(k, [lat for t, lat in d if now - t <= window_s]) for k, d in self._lat.items()]
        out: dict[str, dict[str, Any]] = {}
        for (kind, lane), lats in items:
            name = f"{kind}/{lane}" if lane else kind
            out[name] = {
                "kind": kind,
                "lane": lane or None,
                "n": len(lats),
                "p50_s": quantile(lats, 0.5),
                "p90_s": quantile(lats, 0.9),
                "p99_s": quantile(lats, 0.99),
                "max_s": max(lats) if lats else None,
            }
        return out
