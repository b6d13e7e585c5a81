"""Wire format v1 (sbd_stream/protocol.py) as a receiver plug-in: decode, sequence accounting, emit.

A bridge publishes on PUB, so this dialect asks for a SUB socket by default; ``socket_type = "pull"``
takes frames from a PUSH sender instead, which is how several ``serve`` instances share one stream
(docs/scale-out-nodes.md): each gets every N-th message, so only one of them sees ``series_start``
and one ``series_end``, the others record and denoise their frames without (logged once per
acquisition), and each instance's gap counters include the frames the others took. The only state
is the continuity accounting, per acquisition: ``series_start`` resets its acquisition's (a restart when
a stream was already running), frames are classified by their (acq, seq) pairs, duplicates dropped; a
frame that restarts its acquisition's numbering is marked (``Frame.seq_restart``) so the recorder
starts a new part.
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Any

from sbd_stream.config import InputDialect, InputSocket
from sbd_stream.frames import Frame  # the service's own meta keys: one home
from sbd_stream.protocol import (
    TOPIC_FRAME,
    TOPIC_SERIES_START,
    ProtocolError,
    SeriesMessage,
    decode,
)
from sbd_stream.sources.dialect import Emitter, SocketSpec
from sbd_stream.sources.sequence import (
    REMEMBER_EVICTED,
    AcquisitionSequences,
    SeqEvent,
    count_sequence_event,
)

__all__ = ["WireV1Dialect"]

log = logging.getLogger(__name__)

KNOWN_ACQS = 64 + REMEMBER_EVICTED
"""Acquisitions whose missing ``series_start`` was already said (or that had one): as many as the sequence
accounting remembers, least recently active forgotten first. It was the 64 most recently *added*: with 80
acquisitions round-robin each frame found its acquisition forgotten and logged the "logged once per
acquisition" line again, one INFO line per frame (audit h30)."""
PULL_HEARTBEAT_S = 1.0
"""ZMTP heartbeat on a PULL input: a PUSH sender that vanished without closing is otherwise unnoticed."""


class WireV1Dialect:
    """Plug-in for sbd-stream's own wire format v1."""

    name = InputDialect.wire_v1.value

    def __init__(
        self, max_payload_bytes: int, emit: Emitter, socket_type: InputSocket = InputSocket.sub
    ) -> None:
        self.max_payload_bytes = max_payload_bytes
        self.emit = emit
        self.tracker = AcquisitionSequences()
        pull = socket_type is InputSocket.pull
        self.socket = SocketSpec(socket_type, PULL_HEARTBEAT_S if pull else None)
        self._known: collections.OrderedDict[str, None] = collections.OrderedDict()  # started or reported

    def handle(self, parts: list[Any]) -> None:
        t0 = time.perf_counter()
        m = self.emit.metrics
        try:
            msg = decode(parts, self.max_payload_bytes)
        except ProtocolError as exc:
            self.emit.malformed(exc, self.name)
            return
        if isinstance(msg, SeriesMessage):
            if msg.topic == TOPIC_SERIES_START:
                if self.tracker.running:
                    m.restarts.inc()
                self.tracker.start(msg.header.acq)
                self._remember(msg.header.acq)
            self.emit.series(msg)
            return
        if msg.topic != TOPIC_FRAME:  # e.g. an output looped back into the input
            what = f"topic {msg.topic.decode()!r} is an output of the service, not an input"
            self.emit.reject("unexpected_topic", what)
            return
        event, missing = self.tracker.observe(msg.header.acq, msg.header.seq, msg.header.ts)
        if not count_sequence_event(m, event, missing):
            return
        if not self._remember(msg.header.acq):  # its start went to another instance (PUSH), or was lost
            log.info(
                "wire-v1 input: frames of %s arrive without its series_start (sent to another instance, "
                "or missed): denoising and recording them (logged once per acquisition)",
                msg.header.acq,
            )
        # a producer's meta key named like one the service sets is renamed by ``Emitter.frame``
        self.emit.frame(Frame(msg.header, msg.data, t0, seq_restart=event is SeqEvent.restart))

    def _remember(self, acq: str) -> bool:
        """Mark ``acq`` as the most recently active known one; False when it was not known before."""
        known = acq in self._known
        self._known[acq] = None
        self._known.move_to_end(acq)
        while len(self._known) > KNOWN_ACQS:
            self._known.popitem(last=False)
        return known

    def tick(self, now: float) -> None:
        """Wire format v1 has no timeouts: a series without an end stays open until the next start."""
