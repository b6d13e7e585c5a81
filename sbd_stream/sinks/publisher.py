"""Publisher: denoised frames and likelihood maps out on a ZeroMQ PUB socket, in wire format v1.

Frames never block: a subscriber at its high-water mark simply misses them (it sees the gap in the
sequence numbers). Each time a frame finds its pipe full is counted in
``sbd_publish_subscriber_full_total{topic}`` and the first is logged: a lower bound of what it missed,
as ZeroMQ then passes it by without telling until it has read half its pipe. A small SNDHWM keeps a slow
subscriber from growing our memory; a bounded publish queue that drops its oldest entry keeps a slow
serialisation from stalling the denoiser.

Series messages (``series_start`` / ``series_end``) are promised to get through: the socket is an
XPUB with ``ZMQ_XPUB_NODROP`` (sinks/xpub.py: frames never wait, a series message waits up to
``2 SERIES_WAIT_S`` for a full pipe). What still does not fit (a subscriber that stopped reading) is
counted in ``sbd_publish_dropped_total{topic}`` and logged (rate-limited).

``denoised`` goes out as ``publish.dtype``: with float16 (half the bytes) a value beyond +-65504 is
clipped to it as the recording does (``sinks/stored_dtype.py``: not sent as inf, counted in
``sbd_published_clipped_pixels_total``, logged once); ``llr`` is always float32.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from sbd_stream.config import PublishSettings, SocketMode
from sbd_stream.frames import SERVICE_META_KEYS, FrameQueue
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
from sbd_stream.sinks.stored_dtype import PUBLISHED, StoredDtype
from sbd_stream.sinks.xpub import SERIES_WAIT_S, HandshakeWatch, XPubSender, xpub_socket
from sbd_stream.supervisor import Supervisor
from sbd_stream.worker import BackgroundWorker, consume
from sbd_stream.zmq_bind import bind_held
from sbd_stream.zmq_context import end_context, own_context

log = logging.getLogger(__name__)

# SERVICE_META_KEYS (frames.py): kept when the producer's meta must go (an output header over 64 KiB), so
# a client can rely on what docs/wire-format.md promises (``n_columns`` on every ``llr``, the flags);
# dropping them too made ``meta.n_columns`` a KeyError (audit h28, 8).
KEPT_VALUE_BYTES = 512
"""A kept key's value is at most this much JSON (the service's are numbers, booleans, the four column
field names, a path): a producer's own key of the same name and a larger value goes with its meta, so the
kept keys (~6 kB at most) never pass the limit themselves beside the column table (at most 1000 rows)."""


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
        self._own_ctx = context is None  # its own: ``_finalize`` ends it (why there)
        self.ctx = context or own_context()
        self.queue = FrameQueue(
            settings.queue_frames,
            drop_oldest=True,
            on_evict=self._evicted,
            on_change=metrics.queue_depth.labels(queue="publish").set,
        )
        self.sock = xpub_socket(self.ctx, settings.sndhwm)  # a PUB to subscribers; NODROP for series
        self.sender = XPubSender(self.sock)
        self.sock.setsockopt(zmq.IPV6, ipv6_endpoint(settings.endpoint))  # tcp://[::1]:5556
        apply_curve(self.sock, settings.curve, settings.mode is SocketMode.bind, "sbd-publish")
        if settings.mode is SocketMode.bind:
            warn_if_exposed("publisher", settings.endpoint)
            bind_held(self.sock, settings.endpoint)  # adopts the port held since start-up (service_start)
        else:
            self.sock.connect(settings.endpoint)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT) or settings.endpoint
        self._handshakes = HandshakeWatch(self.sock, self._handshake_failed)  # a viewer's wrong key
        if self.endpoint != settings.endpoint:  # "*" or ":0": the banner shows what was asked, not this
            log.info("publishing on %s", self.endpoint)
        self._out_dtype = StoredDtype(settings.dtype, metrics, PUBLISHED)  # float16: clipped, not inf
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

    def submit(self, item: OutputItem) -> bool:
        """Queue without blocking; series messages are never dropped (``force``: they are rare). False
        once closed at stop (an output that came later): counted in ``sbd_publish_dropped_total``."""
        ok = self.queue.put(item, 0 if item.data is None else int(item.data.nbytes), force=item.data is None)
        if not ok:
            topic = item.topic.decode()
            self.metrics.publish_dropped.labels(topic=topic).inc()
            msg = "publisher closed at stop: %s %s of %s NOT sent (counted in sbd_publish_dropped_total)"
            self._said.log(
                "closed", logging.WARNING, "outputs NOT sent (closed at stop)", msg, topic, item.seq, item.acq
            )
        return ok

    def stop(self) -> None:
        """Send what is queued, then close."""
        self.queue.close()

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        self._said.tick(force=True)  # what came after the close: its sum, now

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def give_up(self, why: str) -> int:
        """Out of time at stop: what is still queued is NOT sent, counted per topic in
        ``sbd_publish_dropped_total`` and said in one line with its number. Returns how many."""
        self.queue.close()
        _, left = self.queue.drain_newest(0)
        for item in left:
            assert isinstance(item, OutputItem)
            self.metrics.publish_dropped.labels(topic=item.topic.decode()).inc()
        log.warning("publisher: %s: %d queued outputs NOT sent (sbd_publish_dropped_total)", why, len(left))
        return len(left)

    def _run(self) -> None:
        consume(self.queue, self.send, self.stage, self.supervisor, on_error=self._failed, tick=self._tick)

    def _tick(self) -> None:
        """At least every 0.2 s, busy or idle: failed handshakes counted, held-back lines summed up."""
        self._handshakes.poll()
        self._said.tick()

    def _handshake_failed(self, cause: str, endpoint: str) -> None:
        """A subscriber refused at the handshake receives nothing: counted, and said once per cause."""
        self.metrics.publish_handshake_failures.labels(cause=cause).inc()
        why = (
            "its CURVE key is not in publish.curve.authorized_keys_dir"
            if cause == "refused"
            else "it does not use CURVE as the service does (or not the service's public key as its server "
            "key), or it is no ZeroMQ subscriber"
        )
        self._said.log(
            f"handshake_{cause}", logging.WARNING, f"subscriber handshakes failed ({cause})",
            "publisher on %s: a subscriber's handshake failed: %s; it receives nothing (counted in "
            "sbd_publish_handshake_failures_total{cause=%r}; docs/deployment.md, CURVE)",
            endpoint, why, cause,
        )  # fmt: skip

    def _finalize(self) -> None:
        """Close, and (its own context) wait until what is queued has left, at most the 1 s linger.

        Why the wait: frames go out without a copy, so libzmq reads the arrays after ``send`` returned;
        with a subscriber behind, ``serve`` / ``replay --publish`` ended while frames were queued, the
        interpreter's teardown freed them under libzmq's I/O thread and the process aborted ("Bad
        address (src/tcp.cpp:227)", status 134), the ``series_end`` already sent never arriving
        (audit 25 zerocopy). Ending the context waits for them while they are alive."""
        self._handshakes.poll()  # the last ones counted too
        self._handshakes.close()  # before the socket: an open monitor holds the context's end
        self.sock.close(linger=1000)  # let queued messages (e.g. series_end) leave, bounded
        self._end_context()

    def release_unstarted(self) -> None:
        """A publisher whose thread never ran: its socket closed, its context ended (nothing queued)."""
        self._handshakes.close()
        self.sock.close(linger=0)
        self._end_context()

    def _end_context(self) -> None:
        if self._own_ctx:
            end_context(self.ctx)

    def _failed(self, item: OutputItem, _exc: Exception) -> None:
        """An item the supervisor set aside was not published: count it as dropped."""
        self.metrics.publish_dropped.labels(topic=item.topic.decode()).inc()

    def _payload(self, item: OutputItem) -> np.ndarray | None:
        """``denoised`` in ``publish.dtype`` (cast once per item, so a clip is counted once)."""
        if item.data is None or item.topic != TOPIC_DENOISED:
            return item.data
        return self._out_dtype(item.data, item.acq, item.seq)

    def _encode(self, item: OutputItem, meta: dict[str, Any], data: np.ndarray | None) -> list:
        if data is None:
            return encode_series(item.topic, item.acq, item.ts, meta, item.n_frames)
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
        and column table are added): then it goes out without the producer's meta, the service's own
        keys kept and a note saying what was dropped (``without_producer_meta``), rather than not at all.
        """
        t0 = time.perf_counter()
        topic = item.topic.decode()
        data = self._payload(item)
        try:
            parts = self._encode(item, item.meta, data)
        except HeaderTooLarge as exc:
            self._meta_dropped(topic, item, exc)
            try:
                parts = self._encode(item, without_producer_meta(item.meta), data)
            except HeaderTooLarge:  # not seen: the kept keys are bounded (KEPT_VALUE_BYTES); the note alone
                parts = self._encode(item, {"meta_dropped": "output header over the 64 KiB limit"}, data)
        try:
            if item.data is None:
                complete = self.sender.series(parts)
                if not complete:
                    self._missed_series(topic, item.acq)
            else:
                complete = True
                if not self.sender.frame(parts):  # a subscriber whose pipe is full misses it, the others not
                    self._subscriber_full(topic, item)
        except (zmq.ZMQError, OSError) as e:
            self._refused(topic, item, e)
            return False
        now = time.perf_counter()
        self.metrics.frames_published.labels(topic=topic).inc()  # a missed series message: the others
        self.metrics.stage_latency.labels(stage="publish").observe(now - t0)
        if item.t_recv is not None and item.topic == TOPIC_DENOISED:
            self.metrics.e2e_latency.observe(now - item.t_recv)
        return complete

    def _meta_dropped(self, topic: str, item: OutputItem, exc: HeaderTooLarge) -> None:
        """An output sent without the producer's meta (its header passed 64 KiB): the first at WARNING,
        later ones at DEBUG, summed up once a minute (``log_limit``). A bridge whose every frame carries a
        meta near the limit wrote one WARNING per frame, 40 lines a second at 40 Hz (audit h35, D8); each
        message still says so itself (``meta.meta_dropped``) and every one is counted
        (``sbd_publish_meta_dropped_total{topic}``)."""
        self.metrics.publish_meta_dropped.labels(topic=topic).inc()
        self._said.log(
            "meta_dropped", logging.WARNING, "outputs sent without the producer's meta (header over 64 KiB)",
            "publisher: %s %s/%s: %s; sent without the producer's meta (meta.meta_dropped says what went; "
            "later ones at DEBUG, summed up a minute)",
            topic, item.acq, item.seq, exc,
        )  # fmt: skip

    def _refused(self, topic: str, item: OutputItem, e: Exception) -> None:
        """ZeroMQ could not take an output (out of descriptors: "Too many open files" from pyzmq's
        zero-copy bookkeeping socket): counted in ``sbd_publish_dropped_total{topic}`` and logged once
        per run, then summed up a minute (``log_limit``). It was one ERROR with a traceback per frame
        from the supervisor, 54 for one acquisition at ``ulimit -n 32``."""
        self.metrics.publish_dropped.labels(topic=topic).inc()
        hint = "; raise the open-file limit (docs/deployment.md)" if "open files" in str(e) else ""
        self._said.log(
            "refused", logging.ERROR, "outputs ZeroMQ refused (NOT sent)",
            "publisher: %s %s of %s NOT sent: %s (counted in sbd_publish_dropped_total)%s",
            topic, item.seq, item.acq, e, hint,
        )  # fmt: skip

    def _subscriber_full(self, topic: str, item: OutputItem) -> None:
        """A frame found a subscriber's pipe full: counted in ``sbd_publish_subscriber_full_total`` and
        logged once (then summed up a minute). That subscriber misses it, and ZeroMQ passes it by without
        telling until it has read half its pipe: those frames are not counted here (the subscriber sees
        every one as a gap in ``seq``). It was neither counted nor logged (session 29)."""
        self.metrics.publish_subscriber_full.labels(topic=topic).inc()
        self._said.log(
            "subscriber_full", logging.WARNING, "frames that found a subscriber's queue full",
            "a subscriber is not keeping up: its queue of %d messages (publish.sndhwm) was full at %s %s "
            "of %s, so it misses frames (it sees gaps in seq; the others are not held up; counted in "
            "sbd_publish_subscriber_full_total)",
            self.s.sndhwm, topic, item.seq, item.acq,
        )  # fmt: skip

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


def without_producer_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` with only the service's own keys (``SERVICE_META_KEYS``, each value at most
    ``KEPT_VALUE_BYTES``) and ``meta_dropped``: which output header passed the limit and what went."""
    kept = {
        k: v
        for k, v in meta.items()
        if k in SERVICE_META_KEYS and len(json.dumps(v, allow_nan=False)) <= KEPT_VALUE_BYTES
    }
    gone = {k: v for k, v in meta.items() if k not in kept}
    size = len(json.dumps(gone, separators=(",", ":"), allow_nan=False).encode())
    keys = f"{len(gone)} key{'s' * (len(gone) != 1)}"
    note = (
        f"output header over the 64 KiB limit: the producer's meta dropped ({keys}, {size} bytes of JSON); "
        "the service's own keys kept"
    )
    return {**kept, "meta_dropped": note}
