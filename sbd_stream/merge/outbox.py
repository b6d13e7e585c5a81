"""The merge's output queue: a burst waits briefly for a subscriber's full pipe instead of skipping it.

After a missing frame's ``--window`` (or ``--gap-timeout``) the merge releases everything it held at
once: 65 ``llr`` frames in the audit, more than a subscriber's pipe (``sndhwm``, 64) plus the socket
buffers. On the XPUB with ``ZMQ_XPUB_NODROP`` (sinks/xpub.py) the first message that meets the full pipe
gets EAGAIN; sent the lossy way, it makes ZeroMQ set that pipe aside until its reader has drained half
of it, and every message sent meanwhile skips it *without an error*: a subscriber that reads all the
time missed 18 frames and ``sbd_merge_send_dropped_total`` said 1 (libzmq 4.3.5, checked with a real
XPUB / SUB pair: once set aside, 51 later sends succeeded, none reached it).

So a message that meets a full pipe is kept here, in order with everything after it, and retried on
every turn of the merge's loop, which goes on reading its inputs (nothing here sleeps): a subscriber
that reads gets the whole burst. Only a head that stayed blocked for ``pace_s`` (or was queued
``MAX_AGE_S`` ago, or has more than ``limit`` behind it) goes the lossy way (counted: that subscriber
missed it; the ones sent while ZeroMQ sets its pipe aside it misses uncounted, which nothing can count:
EAGAIN does not say whose pipe is full, and a set-aside pipe is not checked at all).

The price: a subscriber slower than the stream holds the others back by up to ``pace_s`` each time its
pipe fills again. A "don't wait again for a while after a give-up" rule was tried and refused: the
messages queued during the wait then went out as a burst, met a *reading* subscriber's full pipe, and
were skipped for it at once (one stalled and one reading subscriber, 1 MB frames at 100 Hz: the reader
missed 17 of 200, none before).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

import zmq

from sbd_stream.sinks.xpub import SERIES_WAIT_S, XPubSender

__all__ = ["MAX_AGE_S", "PACE_S", "Outbox"]

PACE_S = 0.2
"""How long the first queued message waits for a full subscriber pipe before it goes the lossy way."""

MAX_AGE_S = 1.0
"""No message waits longer in all: a reader a little slower than the stream (its pipe drained by half
within ``PACE_S``, again and again) would otherwise pace everyone to its rate (4.8 s behind, seen)."""


class Outbox:
    """Messages for the merge's XPUB, sent in order; ``pump`` sends what fits now and never sleeps.

    ``on_dropped`` is called for each message sent the lossy way (a subscriber's pipe stayed full). At
    most ``limit`` messages wait: beyond that the first goes the lossy way at once (memory stays bounded
    like the reorder buffer's ``--window``). One thread only: the socket's owner."""

    def __init__(
        self,
        sender: XPubSender,
        on_dropped: Callable[[], None],
        limit: int,
        pace_s: float = PACE_S,
    ) -> None:
        self.sender = sender
        self.on_dropped = on_dropped
        self.limit = max(1, limit)
        self.pace_s = pace_s
        self.max_age_s = max(pace_s, MAX_AGE_S)
        self.queue: collections.deque[tuple[list, bool, float]] = collections.deque()  # parts, series, since
        self.blocked_at: float | None = None  # when the first queued message first met a full pipe
        self.aside_at = -float("inf")  # when a message last went the lossy way (a pipe set aside)

    def __len__(self) -> int:
        return len(self.queue)

    def put(self, parts: list, series: bool) -> None:
        """Queue one message behind the others and send what fits now."""
        self.queue.append((parts, series, time.monotonic()))
        self.pump()

    def pump(self) -> None:
        """Send the queued messages in order until one meets a full pipe that may still be waited for."""
        if not self.queue:
            return
        self.sender.drain_subscriptions()
        sock = self.sender.sock
        while self.queue:
            parts, series, since = self.queue[0]
            t = time.monotonic()
            if series and t < self.aside_at + SERIES_WAIT_S:
                return  # a set-aside pipe's reader catching up gets the series message (XPubSender.series)
            try:
                sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                if self.blocked_at is None:
                    self.blocked_at = t
                may_wait = t - self.blocked_at < self.pace_s and t - since < self.max_age_s
                if may_wait and len(self.queue) <= self.limit:
                    return
                self.sender.lossy(parts)  # the full subscriber misses it; ZeroMQ sets its pipe aside
                self.aside_at = t
                self.on_dropped()
            self.queue.popleft()
            self.blocked_at = None

    def finish(self, timeout_s: float = 5.0) -> None:
        """Send everything queued, waiting as ``pump`` allows (a stopped merge or one without its loop);
        what is still queued after ``timeout_s`` goes the lossy way."""
        end = time.monotonic() + timeout_s
        while self.queue and time.monotonic() < end:
            self.pump()
            if self.queue:
                time.sleep(0.001)
        while self.queue:
            parts, _series, _since = self.queue.popleft()
            try:
                self.sender.sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                self.sender.lossy(parts)
                self.on_dropped()
        self.blocked_at = None
