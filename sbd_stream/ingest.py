"""Ingest: a ZeroMQ SUB socket that validates, accounts and fans frames out without ever blocking.

The receive thread only decodes (zero-copy), checks sequence continuity and hands frames to
non-blocking callbacks. Anything slower (recording, denoising) happens on other threads behind bounded
queues, because a receiver that stalls makes ZeroMQ drop frames silently at its high-water mark.
"""

from __future__ import annotations

import collections
import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import zmq

from sbd_stream.config import IngestSettings, SocketMode
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import (
    TOPIC_FRAME,
    FrameHeader,
    FrameMessage,
    ProtocolError,
    SeriesMessage,
    decode,
)
from sbd_stream.security import apply_curve
from sbd_stream.worker import BackgroundWorker

log = logging.getLogger(__name__)


@dataclass
class Frame:
    """A raw frame inside the service. ``data`` views the received ZeroMQ buffer (read-only)."""

    header: FrameHeader
    data: np.ndarray
    t_recv: float = field(default_factory=time.perf_counter)


class SeqEvent(enum.Enum):
    ok = "ok"
    gap = "gap"
    restart = "restart"
    duplicate = "duplicate"
    out_of_order = "out_of_order"


class SequenceTracker:
    """Per-stream continuity accounting from the (acq, seq) pairs in the headers.

    Forward jumps are gaps; a repeat of a recently seen number is a duplicate (dropped); a small step
    back to an unseen number is a late frame (kept, counted); a new acquisition id, seq 0 again, or a
    large step back is a restart (a bridge or detector that came back).
    """

    def __init__(self, reorder_window: int = 1024) -> None:
        self.window = reorder_window
        self.acq: str | None = None
        self.last = -1
        self._seen: collections.deque[int] = collections.deque(maxlen=reorder_window)
        self._seen_set: set[int] = set()

    def reset(self, acq: str | None = None) -> None:
        self.acq, self.last = acq, -1
        self._seen.clear()
        self._seen_set.clear()

    def _remember(self, seq: int) -> None:
        if len(self._seen) == self._seen.maxlen:
            self._seen_set.discard(self._seen[0])
        self._seen.append(seq)
        self._seen_set.add(seq)

    def observe(self, acq: str, seq: int) -> tuple[SeqEvent, int]:
        """Classify one frame; returns (event, number of missing frames for a gap)."""
        if self.acq is not None and acq != self.acq:
            self.reset(acq)
            self._remember(seq)
            self.last = seq
            return SeqEvent.restart, 0
        first = self.acq is None or self.last < 0
        self.acq = acq
        if first or seq == self.last + 1:
            self._remember(seq)
            self.last = seq
            return SeqEvent.ok, 0
        if seq > self.last + 1:
            missing = seq - self.last - 1
            self._remember(seq)
            self.last = seq
            return SeqEvent.gap, missing
        if (seq == 0 and self.last > 0) or self.last - seq > self.window:
            self.reset(acq)
            self._remember(seq)
            self.last = seq
            return SeqEvent.restart, 0
        if seq in self._seen_set:
            return SeqEvent.duplicate, 0
        self._remember(seq)
        return SeqEvent.out_of_order, 0


def count_sequence_event(m: Metrics, event: SeqEvent, missing: int) -> bool:
    """Count what a frame's sequence number revealed; False for a duplicate, which is dropped."""
    if event is SeqEvent.duplicate:
        m.frames_duplicate.inc()
        return False
    if event is SeqEvent.gap:
        m.gaps.inc()
        m.frames_gap.inc(missing)
    elif event is SeqEvent.restart:
        m.restarts.inc()
    elif event is SeqEvent.out_of_order:
        m.frames_out_of_order.inc()
    return True


class FrameQueue:
    """Bounded hand-off between threads, by frame count and bytes, that never blocks the producer.

    ``put`` returns False when the item did not fit (the caller decides how to count that loss).
    With ``drop_oldest`` a full queue evicts its oldest item instead, which is how the 'latest'
    policy keeps the denoiser on the newest frames; ``on_evict`` counts those.
    """

    def __init__(
        self,
        maxlen: int,
        max_bytes: int | None = None,
        drop_oldest: bool = False,
        on_evict: Callable[[object], None] | None = None,
    ) -> None:
        self.maxlen, self.max_bytes, self.drop_oldest = maxlen, max_bytes, drop_oldest
        self.on_evict = on_evict
        self._items: collections.deque[tuple[object, int]] = collections.deque()
        self._bytes = 0
        self._cond = threading.Condition()
        self.closed = False

    def __len__(self) -> int:
        return len(self._items)

    def _full(self, nbytes: int) -> bool:
        if len(self._items) >= self.maxlen:
            return True
        return self.max_bytes is not None and self._items and self._bytes + nbytes > self.max_bytes

    def put(self, item: object, nbytes: int = 0, force: bool = False) -> bool:
        """Enqueue without blocking; ``force`` ignores the bounds (control messages must not be lost)."""
        with self._cond:
            if self.closed:
                return False
            while not force and self._full(nbytes):
                if not self.drop_oldest:
                    return False
                old, ob = self._items.popleft()
                self._bytes -= ob
                if self.on_evict is not None:
                    self.on_evict(old)
            self._items.append((item, nbytes))
            self._bytes += nbytes
            self._cond.notify()
            return True

    def get(self, timeout: float | None = None) -> object | None:
        """Oldest item, or None on timeout / when closed and empty."""
        with self._cond:
            if not self._items and not self.closed:
                self._cond.wait(timeout)
            if not self._items:
                return None
            item, nb = self._items.popleft()
            self._bytes -= nb
            return item

    def wait_not_full(self, timeout: float) -> None:
        """For sources that may block (file replay): sleep until there is room or timeout."""
        end = time.monotonic() + timeout
        while len(self._items) >= self.maxlen and not self.closed and time.monotonic() < end:
            time.sleep(0.0005)

    def get_nowait(self) -> object | None:
        with self._cond:
            if not self._items:
                return None
            item, nb = self._items.popleft()
            self._bytes -= nb
            return item

    def drain_newest(self, keep: int) -> tuple[list[object], list[object]]:
        """Take everything: (up to ``keep`` newest items, the older ones that were skipped)."""
        with self._cond:
            items = [it for it, _ in self._items]
            self._items.clear()
            self._bytes = 0
        return items[-keep:] if keep else [], items[:-keep] if keep else items

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


FrameHandler = Callable[[Frame], None]
SeriesHandler = Callable[[SeriesMessage], None]


class Ingest(BackgroundWorker):
    """SUB socket receive thread. Handlers must not block; malformed input is counted, never fatal."""

    thread_name = "sbd-ingest"

    def __init__(
        self,
        settings: IngestSettings,
        metrics: Metrics,
        on_frame: FrameHandler,
        on_series: SeriesHandler | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        self.settings, self.metrics = settings, metrics
        self.on_frame, self.on_series = on_frame, on_series
        self.ctx = context or zmq.Context.instance()
        self.tracker = SequenceTracker()
        self._init_worker()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, settings.rcvhwm)
        self.sock.setsockopt(zmq.LINGER, 0)
        # Memory guard: libzmq refuses (and disconnects the peer for) a part far larger than any
        # valid frame before allocating it; parts just over the limit reach decode() and are counted.
        self.sock.setsockopt(zmq.MAXMSGSIZE, 2 * settings.max_payload_bytes + (1 << 20))
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        apply_curve(self.sock, settings.curve, settings.mode is SocketMode.bind, "sbd-ingest")
        if settings.mode is SocketMode.bind:
            self.sock.bind(settings.endpoint)
        else:
            self.sock.connect(settings.endpoint)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT) or settings.endpoint
        self.last_frame_time = 0.0

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if not poller.poll(100):
                    continue
                # Drain what is there before polling again: fewer syscalls under load.
                for _ in range(64):
                    try:
                        parts = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    try:
                        self.handle(parts)
                    except Exception:  # a bug downstream must not end reception
                        self.metrics.frames_malformed.labels(reason="internal_error").inc()
                        log.exception("handling a received message failed")
        finally:
            self.sock.close(linger=0)

    def handle(self, parts: list) -> None:
        """Validate, account and dispatch one received multipart message."""
        t0 = time.perf_counter()
        m = self.metrics
        try:
            msg = decode(parts, self.settings.max_payload_bytes)
        except ProtocolError as exc:
            m.frames_malformed.labels(reason=exc.reason).inc()
            log.debug("dropped malformed message: %s", exc)
            return
        if isinstance(msg, SeriesMessage):
            m.series.labels(topic=msg.topic.decode()).inc()
            if msg.topic == b"series_start":
                if self.tracker.acq is not None:
                    m.restarts.inc()
                self.tracker.reset(msg.header.acq)
            if self.on_series is not None:
                self.on_series(msg)
            return
        assert isinstance(msg, FrameMessage)
        if msg.topic != TOPIC_FRAME:
            m.frames_malformed.labels(reason="unexpected_topic").inc()
            return
        if not count_sequence_event(m, *self.tracker.observe(msg.header.acq, msg.header.seq)):
            return
        m.frames_received.inc()
        self.last_frame_time = time.monotonic()
        m.stage_latency.labels(stage="decode").observe(time.perf_counter() - t0)
        self.on_frame(Frame(msg.header, msg.data, t0))
