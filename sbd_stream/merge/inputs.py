"""The merge's SUB sockets to the instances, watched: a peer libzmq gave up on is re-dialled by hand.

Why: a connecting socket re-dials after a connection error but not after a refused CURVE handshake
(the instance's ``authorized_keys_dir`` lacked ``merge.key``: ``HANDSHAKE_FAILED_AUTH``) nor after a
protocol error (a message part over ``MAXMSGSIZE``). The merge then received nothing from that instance
for the rest of its life -- also after the operator had copied ``merge.key`` and restarted the instance
-- with no line and no counter ("in 0" in the status line). The socket monitor tells it
(``sources/transport.py``, the service input's rules): every failed handshake is counted in
``sbd_merge_input_disconnects_total{input, cause="handshake"}`` and the first one per input is logged
with what to check; a dropped peer that nobody re-dials makes the socket be opened anew.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import zmq
from prometheus_client import Counter

from sbd_stream.protocol import ipv6_endpoint
from sbd_stream.security import CurveError, CurveSettings, apply_curve
from sbd_stream.sources.transport import TransportWatch

__all__ = ["RECONNECT_IVL_MAX_MS", "MergeInputs"]

log = logging.getLogger(__name__)

RECONNECT_IVL_MAX_MS = 500
"""Longest re-dial backoff to an instance: a restarted instance's first frames published before the
merge re-dialled are lost to the merge (gaps; still in the instance's recording), so keep it short."""


class _Bound:
    """``disconnects.labels(cause=...)`` of one input, as ``TransportWatch`` counts them."""

    def __init__(self, counter: Counter, index: str) -> None:
        self.counter, self.index = counter, index
        self.handshake_failed = False  # TransportWatch asks for this label only to count one

    def labels(self, cause: str) -> Any:
        self.handshake_failed |= cause == "handshake"
        return self.counter.labels(input=self.index, cause=cause)


class _InputMetrics:
    """What ``TransportWatch`` counts, on the merge's registry: a dropped peer's cause per input, and an
    oversized part (libzmq's usual reason to drop a peer for a protocol error) as a malformed message."""

    def __init__(self, disconnects: Counter, malformed: Counter, index: int) -> None:
        self.input_disconnects = _Bound(disconnects, str(index))
        self.frames_malformed = malformed


class MergeInputs:
    """One SUB socket per instance's publisher; ``check`` re-opens the ones whose peer was given up."""

    def __init__(
        self,
        ctx: zmq.Context,
        endpoints: list[str],
        rcvhwm: int,
        max_msg: int,
        curve: CurveSettings | None,
        metrics: Any,
    ) -> None:
        """``metrics``: the merge's (``MergeMetrics``): ``received``, ``input_disconnects``, ``malformed``."""
        disconnects = metrics.input_disconnects
        self.ctx, self.endpoints, self.rcvhwm, self.max_msg = ctx, endpoints, rcvhwm, max_msg
        self.curve = curve
        self._metrics = [_InputMetrics(disconnects, metrics.malformed, i) for i in range(len(endpoints))]
        self._hinted: set[int] = set()
        self.socks: list[zmq.Socket] = []
        self.watches: list[TransportWatch] = []
        try:
            for i in range(len(endpoints)):  # exported at 0: an instance never heard of shows as one
                metrics.received.labels(input=str(i))
                for cause in ("handshake", "refused", "closed"):
                    disconnects.labels(input=str(i), cause=cause)  # exported at 0, as every known label
                self.socks.append(self._open(i))
        except BaseException:
            self.close()
            raise

    def _open(self, i: int) -> zmq.Socket:
        ep = self.endpoints[i]
        s = self.ctx.socket(zmq.SUB)
        watch: TransportWatch | None = None
        try:
            s.setsockopt(zmq.RCVHWM, self.rcvhwm)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.MAXMSGSIZE, self.max_msg)
            s.setsockopt(zmq.RECONNECT_IVL, 100)
            s.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
            s.setsockopt(zmq.SUBSCRIBE, b"")
            if self.curve is not None:  # before connect, or it is not used
                apply_curve(s, self.curve, binds=False, domain="sbd-merge-in")
            s.setsockopt(zmq.IPV6, ipv6_endpoint(ep))  # tcp://[::1]:P never connected without it
            limit = f"the merge's {self.max_msg / 1e6:.1f} MB, not the service's setting"
            watch = TransportWatch(s, True, self._metrics[i], f"merge: {ep}", limit)
            s.connect(ep)
        except BaseException:  # a monitor left open would hang the context's term
            if watch is not None:
                watch.close()
            s.close(linger=0)
            raise
        if i < len(self.watches):
            self.watches[i] = watch
        else:
            self.watches.append(watch)
        return s

    def check(self, now: float) -> list[int]:
        """Read every monitor; the inputs whose peer was dropped and not re-dialled (``reopen`` them)."""
        due = [i for i, w in enumerate(self.watches) if w.poll(now)]
        for i in range(len(self.watches)):
            if i not in self._hinted and self._metrics[i].input_disconnects.handshake_failed:
                self._hinted.add(i)
                log.warning(
                    "merge: input %d (%s): the CURVE handshake failed, so nothing comes from it: is this "
                    "merge's public key (NAME.key of --curve-secret-key) in the instance's "
                    "authorized_keys_dir, is --curve-server-key its [publish] curve key, is CURVE on at both "
                    "ends (or at neither), is it a serve --output? Re-dialled; counted in "
                    'sbd_merge_input_disconnects_total{cause="handshake"} (this hint once per input)',
                    i, self.endpoints[i],
                )  # fmt: skip
        return due

    def redial(self, now: float, drain: Callable[[zmq.Socket, int], None]) -> bool:
        """Re-open the inputs whose peer libzmq will not re-dial, each ``drain``-ed first; True if any."""
        due = self.check(now)
        for i in due:
            drain(self.socks[i], i)
            self.reopen(i)
        return bool(due)

    def poller(self) -> tuple[zmq.Poller, dict[zmq.Socket, int]]:
        """A poller of the sockets as they are now, and each one's input index."""
        poller = zmq.Poller()
        for s in self.socks:
            poller.register(s, zmq.POLLIN)
        return poller, {s: i for i, s in enumerate(self.socks)}

    def reopen(self, i: int) -> zmq.Socket:
        """Dial input ``i``'s instance on a new socket and close the old one (drain it first). A new one
        that cannot be opened (its key file gone since the start) leaves the old one, said in a line."""
        old_sock, old_watch = self.socks[i], self.watches[i]
        try:
            new = self._open(i)
        except (zmq.ZMQError, CurveError, OSError) as exc:
            log.error("merge: input %d (%s): cannot dial it anew (%s)", i, self.endpoints[i], exc)
            return old_sock
        old_watch.close()
        old_sock.close(linger=0)
        self.socks[i] = new
        return new

    def close(self) -> None:
        for w in self.watches:
            w.close()
        for s in self.socks:
            s.close(linger=0)
