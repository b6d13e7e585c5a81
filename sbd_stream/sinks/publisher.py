"""Publisher: denoised frames and likelihood maps out on a ZeroMQ PUB socket, in wire format v1.

Frames never block: a subscriber at its high-water mark simply misses them (it sees the gap in the
sequence numbers). A small SNDHWM keeps a slow subscriber from growing our memory; a bounded publish
queue that drops its oldest entry keeps a slow serialisation from stalling the denoiser.

Series messages (``series_start`` / ``series_end``) are promised to get through, but a PUB drops at
its high-water mark without telling: 20 interleaved acquisitions starting at once sent 20 starts in a
burst, faster than ZeroMQ's I/O thread drains the 16-message pipe, and a subscriber reading all the
time got 16 of them, with nothing counted. So the socket is an XPUB (the same on the wire to every
subscriber) with ``ZMQ_XPUB_NODROP`` on: ZeroMQ then says when a subscriber's pipe is full (EAGAIN).

* A frame that meets a full pipe is sent again at once the lossy way (NODROP off): the others get it,
  the full subscriber misses it, nothing waits. ZeroMQ then sets that pipe aside until its reader has
  drained half of it, and a message sent meanwhile skips it silently.
* So a series message first waits until ``SERIES_WAIT_S`` passed since a frame last met a full pipe
  (a reader that keeps up drains half its pipe well within that), then is retried while a pipe is
  full, for up to ``SERIES_WAIT_S`` more. What still does not fit (a subscriber that stopped reading)
  goes out the lossy way, counted in ``sbd_publish_dropped_total{topic}`` and logged (rate-limited).
  A subscriber still set aside after the wait (one reading slower than the frames come) misses it as
  it misses frames, uncounted. At most ``2 SERIES_WAIT_S`` per series message, which are rare; frames
  queued behind it meanwhile wait in the publish queue (drop-oldest), the denoiser never does.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from sbd_stream.config import PublishSettings, SocketMode
from sbd_stream.frames import FrameQueue
from sbd_stream.log_limit import RateLimitedLog
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import (
    TOPIC_DENOISED,
    FrameHeader,
    HeaderTooLarge,
    encode_frame,
    encode_series,
    ipv6_endpoint,
)
from sbd_stream.security import apply_curve, warn_if_exposed
from sbd_stream.supervisor import Supervisor
from sbd_stream.worker import BackgroundWorker, consume

log = logging.getLogger(__name__)

SERIES_WAIT_S = 0.1
"""How long a series message waits after a frame met a full pipe, and then for a full pipe."""


@dataclass
class OutputItem:
    """One message to publish; ``data`` None means a series message (topic series_start/end)."""

    topic: bytes
    acq: str
    seq: int = 0
    ts: float = 0.0
    data: np.ndarray | None = None
    exposure_s: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)
    columns: list[list[float]] | None = None
    t_recv: float | None = None  # perf_counter() at ingest, for end-to-end latency
    n_frames: int | None = None  # series messages: the frame count the source stated (merge uses it)


class Publisher(BackgroundWorker):
    """Sends queued outputs from its own thread; supervised, so one unsendable item is set aside."""

    thread_name = "sbd-publisher"
    stage = "publisher"

    def __init__(
        self,
        settings: PublishSettings,
        metrics: Metrics,
        engine_id: str,
        context: zmq.Context | None = None,
        supervisor: Supervisor | None = None,
    ) -> None:
        self.s, self.metrics, self.engine_id = settings, metrics, engine_id
        self.ctx = context or zmq.Context.instance()
        self.queue = FrameQueue(
            settings.queue_frames,
            drop_oldest=True,
            on_evict=self._evicted,
            on_change=metrics.queue_depth.labels(queue="publish").set,
        )
        self.sock = self.ctx.socket(zmq.XPUB)  # a PUB to subscribers; NODROP for series messages
        self.sock.setsockopt(zmq.SNDHWM, settings.sndhwm)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.XPUB_NODROP, 1)  # a full pipe says EAGAIN: the lossy way is chosen
        self._overflow_at = -1.0  # monotonic time a frame last met a full subscriber pipe
        self.sock.setsockopt(zmq.IPV6, ipv6_endpoint(settings.endpoint))  # tcp://[::1]:5556
        apply_curve(self.sock, settings.curve, settings.mode is SocketMode.bind, "sbd-publish")
        if settings.mode is SocketMode.bind:
            warn_if_exposed("publisher", settings.endpoint)
            self.sock.bind(settings.endpoint)
        else:
            self.sock.connect(settings.endpoint)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT) or settings.endpoint
        if self.endpoint != settings.endpoint:  # "*" or ":0": the banner shows what was asked, not this
            log.info("publishing on %s", self.endpoint)
        self._out_dtype = np.dtype(settings.dtype)
        self._said = RateLimitedLog(log)
        self._init_worker(supervisor)

    def _evicted(self, item: object) -> None:
        assert isinstance(item, OutputItem)
        self.metrics.publish_dropped.labels(topic=item.topic.decode()).inc()

    def publish(
        self,
        topic: bytes,
        header: FrameHeader,
        data: np.ndarray,
        meta: dict[str, Any] | None = None,
        columns: list[list[float]] | None = None,
        t_recv: float | None = None,
    ) -> None:
        """Queue one output frame named after the raw frame it came from (acquisition, sequence)."""
        h = header
        m = h.meta if meta is None else meta
        self.submit(OutputItem(topic, h.acq, h.seq, h.ts, data, h.exposure_s, m, columns, t_recv))

    def submit(self, item: OutputItem) -> None:
        """Queue without blocking; series messages are never dropped (``force``: they are rare)."""
        self.queue.put(item, 0 if item.data is None else int(item.data.nbytes), force=item.data is None)

    def stop(self) -> None:
        """Send what is queued, then close."""
        self.queue.close()

    def _run(self) -> None:
        consume(self.queue, self.send, self.stage, self.supervisor, on_error=self._failed)

    def _finalize(self) -> None:
        self.sock.close(linger=1000)  # let queued messages (e.g. series_end) leave, bounded

    def _failed(self, item: OutputItem, _exc: Exception) -> None:
        """An item the supervisor set aside was not published: count it as dropped."""
        self.metrics.publish_dropped.labels(topic=item.topic.decode()).inc()

    def _encode(self, item: OutputItem, meta: dict[str, Any]) -> list:
        if item.data is None:
            return encode_series(item.topic, item.acq, item.ts, meta, item.n_frames)
        data = item.data
        if item.topic == TOPIC_DENOISED and data.dtype != self._out_dtype:
            data = data.astype(self._out_dtype)
        return encode_frame(
            data,
            item.acq,
            item.seq,
            item.ts,
            topic=item.topic,
            exposure_s=item.exposure_s,
            meta=meta,
            engine=self.engine_id,
            columns=item.columns,
        )

    def send(self, item: OutputItem) -> bool:
        """Encode and send (a frame without blocking, a series message within ``SERIES_WAIT_S``); False
        (and counted) if ZeroMQ refused it, or a subscriber missed a series message.

        An output header can pass the 64 KiB limit although its input header did not (the engine id
        and column table are added): then it goes out with ``meta`` replaced by a note saying so,
        rather than not at all.
        """
        t0 = time.perf_counter()
        topic = item.topic.decode()
        try:
            parts = self._encode(item, item.meta)
        except HeaderTooLarge as exc:
            log.warning("%s %s/%s: %s; sent without its meta", topic, item.acq, item.seq, exc)
            parts = self._encode(item, {"meta_dropped": "output header over the 64 KiB limit"})
        self._drain_subscriptions()
        if item.data is None:
            complete = self._send_series(parts)
            if not complete:
                self._missed_series(topic, item.acq)
        else:
            complete = True
            try:
                self.sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:  # a subscriber's pipe is full: it misses this frame, the others do not
                self._overflow_at = time.monotonic()
                self._send_lossy(parts)
        now = time.perf_counter()
        self.metrics.frames_published.labels(topic=topic).inc()  # a missed series message: the others
        self.metrics.stage_latency.labels(stage="publish").observe(now - t0)
        if item.t_recv is not None and item.topic == TOPIC_DENOISED:
            self.metrics.e2e_latency.observe(now - item.t_recv)
        return complete

    def _missed_series(self, topic: str, acq: str) -> None:
        self.metrics.publish_dropped.labels(topic=topic).inc()
        self._said.log(
            "series",
            logging.WARNING,
            "series messages a subscriber missed",
            "%s of %s: a subscriber's queue stayed full for %.1f s (it is not reading): sent anyway, that "
            "subscriber misses it (counted in sbd_publish_dropped_total{topic=%r})",
            topic,
            acq,
            SERIES_WAIT_S,
            topic,
        )

    def _send_series(self, parts: list) -> bool:
        """Send a series message to every subscriber whose pipe has room within ``SERIES_WAIT_S``;
        False if one stayed full (the message then went to the others)."""
        aside = self._overflow_at + SERIES_WAIT_S - time.monotonic()
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
        self._send_lossy(parts)  # the full one misses it
        return False

    def _send_lossy(self, parts: list) -> None:
        """Send to every subscriber with room; a full one misses it (and is set aside by ZeroMQ)."""
        self.sock.setsockopt(zmq.XPUB_NODROP, 0)
        try:
            self.sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
        finally:
            self.sock.setsockopt(zmq.XPUB_NODROP, 1)

    def _drain_subscriptions(self) -> None:
        """An XPUB queues (un)subscriptions for us to read; unread, subscribers that come and go would
        grow that queue for ever."""
        while self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            self.sock.recv(zmq.NOBLOCK)
