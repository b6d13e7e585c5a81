"""Sending on an XPUB with ``ZMQ_XPUB_NODROP``: frames never wait, series messages get through bursts.

A PUB drops at its high-water mark without telling: 20 interleaved acquisitions starting at once sent
20 ``series_start`` in a burst, faster than ZeroMQ's I/O thread drains a 16-message pipe, and a
subscriber reading all the time got 16, with nothing counted. An XPUB is the same on the wire to every
subscriber; with NODROP on, ZeroMQ says when a subscriber's pipe is full (EAGAIN).

* A frame that meets a full pipe is sent again at once the lossy way (NODROP off): the others get it,
  the full subscriber misses it, nothing waits. ZeroMQ then sets that pipe aside until its reader has
  drained half of it, and a message sent meanwhile skips it silently.
* So a series message first waits until ``SERIES_WAIT_S`` passed since a frame last met a full pipe
  (a reader that keeps up drains half its pipe well within that), then is retried while a pipe is
  full, for up to ``SERIES_WAIT_S`` more; what still does not fit (a subscriber that stopped reading)
  goes out the lossy way, and the caller counts it. At most ``2 SERIES_WAIT_S`` per series message.

Used by the service's publisher (sinks/publisher.py) and the merge's output (merge/service.py).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import cast

import zmq
from zmq.utils.monitor import recv_monitor_message

__all__ = ["SERIES_WAIT_S", "HandshakeWatch", "XPubSender", "xpub_socket"]

SERIES_WAIT_S = 0.1
"""How long a series message waits after a frame met a full pipe, and then for a full pipe."""


def xpub_socket(ctx: zmq.Context, sndhwm: int) -> zmq.Socket:
    """An XPUB (a PUB to its subscribers) with ``sndhwm`` and NODROP on, LINGER 0."""
    sock = ctx.socket(zmq.XPUB)
    sock.setsockopt(zmq.SNDHWM, sndhwm)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.XPUB_NODROP, 1)  # a full pipe says EAGAIN: the lossy way is then chosen
    return sock


class XPubSender:
    """The two ways of sending on an ``xpub_socket``; one thread only (the socket's owner)."""

    def __init__(self, sock: zmq.Socket) -> None:
        self.sock = sock
        self.overflow_at = -1.0  # monotonic time a frame last met a full subscriber pipe

    def frame(self, parts: list) -> bool:
        """Send a frame without waiting; False if a subscriber's pipe was full (it misses the frame)."""
        self.drain_subscriptions()
        try:
            self.sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            self.overflow_at = time.monotonic()
            self.lossy(parts)
            return False

    def series(self, parts: list) -> bool:
        """Send a series message to every subscriber whose pipe has room within ``SERIES_WAIT_S``;
        False if one stayed full (the message then went to the others)."""
        self.drain_subscriptions()
        aside = self.overflow_at + SERIES_WAIT_S - time.monotonic()
        if aside > 0:  # a pipe a frame found full may still be set aside: let its reader catch up
            time.sleep(aside)
        deadline = time.monotonic() + SERIES_WAIT_S
        while True:
            try:
                self.sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
                return True
            except zmq.Again:  # a subscriber's pipe is full: ZeroMQ's I/O thread drains it
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.001)
        self.lossy(parts)  # the full one misses it
        return False

    def lossy(self, parts: list) -> None:
        """Send to every subscriber with room; a full one misses it (and is set aside by ZeroMQ)."""
        self.sock.setsockopt(zmq.XPUB_NODROP, 0)
        try:
            self.sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
        finally:
            self.sock.setsockopt(zmq.XPUB_NODROP, 1)

    def drain_subscriptions(self) -> None:
        """An XPUB queues (un)subscriptions for us to read; unread, subscribers that come and go would
        grow that queue for ever."""
        while cast(int, self.sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            self.sock.recv(zmq.NOBLOCK)


HANDSHAKE_CAUSES: dict[int, str] = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "refused",  # CURVE: its key is not in authorized_keys_dir
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "mismatch",  # no CURVE, a wrong server key, no ZeroMQ peer
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "mismatch",
}


class HandshakeWatch:
    """Subscribers whose handshake a bound XPUB failed: one ``on_failure(cause, endpoint)`` each.

    Why: a viewer with a key the service does not allow (or without CURVE, or with a wrong server key)
    receives nothing, and nothing on the service side said so; the operator saw a blank viewer. Read
    from the socket's monitor (an inproc PAIR) by the socket's own thread, without blocking; ``close``
    before the socket, or the context's end waits for the monitor for ever."""

    def __init__(self, sock: zmq.Socket, on_failure: Callable[[str, str], None]) -> None:
        self.sock, self.on_failure = sock, on_failure
        self.mon: zmq.Socket | None = sock.get_monitor_socket(sum(HANDSHAKE_CAUSES))

    def poll(self) -> None:
        """Take every pending event (never blocks)."""
        while self.mon is not None:
            try:
                ev = recv_monitor_message(self.mon, zmq.NOBLOCK)
            except zmq.Again:
                return
            cause = HANDSHAKE_CAUSES.get(int(ev["event"]))
            if cause is not None:
                ep = ev.get("endpoint")
                self.on_failure(cause, ep.decode(errors="replace") if isinstance(ep, bytes) else str(ep))

    def close(self) -> None:
        if self.mon is None:
            return
        with contextlib.suppress(zmq.ZMQError):
            self.sock.disable_monitor()
        self.mon.close(linger=0)
        self.mon = None
