"""One small ``Sink`` protocol for everything a pipeline hands its frames and results to.

Why: the pipeline should not know what a publisher, a recorder or a viewer is; it tells each sink
what happened (a raw frame arrived, a series began, a batch of results is ready in frame order) and
starts and stops them in one loop. The adapters here translate those events into the calls of the
concrete sinks in ``sbd_stream/sinks/`` (which stay free of the service's ``BatchResult``), so a new
output is one class here plus its place in the list the builder (``service/build.py``) makes.

Threads: ``raw`` and ``series_arrived`` run on the source's thread and must never block;
``result`` and ``series_done`` run on the worker that released the head of the line, one at a time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from sbd_stream.config import ServiceSettings
from sbd_stream.formats.series_record import series_fields
from sbd_stream.frames import Frame
from sbd_stream.llr_table import llr_columns
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import TOPIC_DENOISED, TOPIC_LLR, TOPIC_SERIES_END, TOPIC_SERIES_START, SeriesMessage
from sbd_stream.service.batch import BatchResult
from sbd_stream.sinks.publisher import OutputItem, Publisher
from sbd_stream.sinks.record_item import Recent
from sbd_stream.sinks.recorder import Recorder, RecordItem
from sbd_stream.supervisor import Supervisor

if TYPE_CHECKING:
    import zmq

    from sbd_stream.sinks.viewer.server import Viewer

__all__ = ["FrameTap", "PublisherSink", "RecorderSink", "Sink", "ViewerSink"]


class Sink(Protocol):
    """What the pipeline tells an output; every method has a do-nothing default."""

    name: str

    def start(self) -> None:
        return None

    def raw(self, frame: Frame) -> None:
        """A raw frame as received (source thread; never block)."""
        return None

    def series_arrived(self, msg: SeriesMessage) -> None:
        """A series message as received, before any of its frames is denoised (source thread)."""
        return None

    def result(self, res: BatchResult) -> None:
        """A batch's results, in frame order (a worker thread, one call at a time)."""
        return None

    def series_done(self, msg: SeriesMessage) -> None:
        """A series message in its place behind the results of its frames."""
        return None

    def stop(self) -> None:
        """Finish what is queued, then close (called after the workers drained)."""
        return None

    def join(self, timeout: float) -> None:
        return None

    def running(self) -> bool:
        """Its thread still runs (after ``stop`` and ``join``: it has not finished draining)."""
        return False

    def give_up(self, why: str) -> None:
        """The stop's time ran out: take no more items, count and log (once) what is left, close."""
        return None


class FrameTap(Sink):
    """A non-blocking raw-frame observer (tests, a viewer's in-process tap)."""

    name = "tap"

    def __init__(self, fn: Callable[[Frame], None]) -> None:
        self.fn = fn

    def raw(self, frame: Frame) -> None:
        self.fn(frame)


class PublisherSink(Sink):
    """Denoised frames, likelihood maps and series messages out on the service's PUB socket."""

    name = "publisher"

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher

    def start(self) -> None:
        self.publisher.start()

    def result(self, res: BatchResult) -> None:
        if res.lane != "live":  # completed frames are old news to live subscribers: the recording has them
            return
        pub = self.publisher
        for i, h in enumerate(res.headers):
            pub.publish(TOPIC_DENOISED, h, res.denoised[i], t_recv=res.t_recv[i])
            if res.likelihood is not None and res.columns is not None:
                ev = 0 if res.evidence_frames is None else int(res.evidence_frames[i])
                vac = None if res.vacuum is None else float(res.vacuum[i])
                meta, table = llr_columns(res.columns[i], ev, vac)
                # the frame's own meta passes through (detector fields, nonfinite_pixels) as on denoised
                pub.publish(TOPIC_LLR, h, res.likelihood[i], {**h.meta, **meta}, table)

    def series_done(self, msg: SeriesMessage) -> None:
        h = msg.header
        self.publisher.submit(OutputItem(msg.topic, h.acq, ts=h.ts, meta=h.meta, n_frames=h.n_frames))

    def stop(self) -> None:
        self.publisher.stop()

    def join(self, timeout: float) -> None:
        self.publisher.join(timeout)

    def running(self) -> bool:
        return self.publisher.running()

    def give_up(self, why: str) -> None:
        self.publisher.give_up(why)


class RecorderSink(Sink):
    """Every raw frame as received (never dropped), then denoised frames and maps as they come."""

    name = "recorder"

    def __init__(self, recorder: Recorder, denoised: bool = True, llr: bool = True) -> None:
        self.recorder, self.denoised, self.llr = recorder, denoised, llr
        # per acq: series_start messages seen, and that count for each series_end not yet done (FIFO).
        # An end reaches ``series_done`` behind its series' outputs, possibly after a next series_start
        # of the same name was recorded: the count tells the recorder it is late (RecordItem.series).
        self._starts: Recent = Recent()
        self._ends: Recent = Recent()
        # series_arrived runs on the source's thread, series_done on a worker's: their read-modify-writes
        # of one acq's entry interleaved, a count was lost and every later end of that name came "late"
        self._lock = threading.Lock()

    def start(self) -> None:
        self.recorder.start()

    def raw(self, frame: Frame) -> None:  # a DECTRIS bitshuffle-LZ4 chunk is stored without recompressing
        # as received, NaN and all; a restarted numbering (no series_start) opens a new part
        self.recorder.record("raw", frame.header, frame.data, chunk=frame.chunk, restart=frame.seq_restart)

    def series_arrived(self, msg: SeriesMessage) -> None:
        acq = msg.header.acq
        if msg.topic == TOPIC_SERIES_END:
            with self._lock:
                self._ends[acq] = [*self._ends.get(acq, []), self._starts.get(acq, 0)]
        else:
            with self._lock:
                self._starts[acq] = self._starts.get(acq, 0) + 1
            h = msg.header  # its ts and announcements (exposure_s, ...) apart from meta: no key hides another
            self.recorder.submit(RecordItem("series_start", h.acq, meta=h.meta, start=series_fields(h)))

    def result(self, res: BatchResult) -> None:
        for i, h in enumerate(res.headers):
            if self.denoised:
                self.recorder.record("denoised", h, res.denoised[i])
            if self.llr and res.likelihood is not None and res.columns is not None:
                ev = 0 if res.evidence_frames is None else int(res.evidence_frames[i])
                vac = None if res.vacuum is None else float(res.vacuum[i])  # the table as published
                self.recorder.record(
                    "llr", h, res.likelihood[i], evidence_frames=ev, columns=res.columns[i], vacuum_counts=vac
                )

    def series_done(self, msg: SeriesMessage) -> None:
        if msg.topic == TOPIC_SERIES_END:
            acq = msg.header.acq
            with self._lock:
                pending = self._ends.pop(acq, [])
                if pending[1:]:
                    self._ends[acq] = pending[1:]
            self.recorder.submit(RecordItem("series_end", acq, series=pending[0] if pending else None))

    def stop(self) -> None:
        self.recorder.stop()

    def join(self, timeout: float) -> None:
        self.recorder.join(timeout)

    def running(self) -> bool:
        return self.recorder.running()

    def give_up(self, why: str) -> None:
        self.recorder.give_up(why)


class ViewerSink(Sink):
    """The live viewer page: raw frames from the in-process tap, outputs by subscribing to the service.

    Built when the pipeline starts, because it names the metrics endpoint, whose port is known only
    once the metrics server runs.
    """

    name = "viewer"

    def __init__(
        self,
        settings: ServiceSettings,
        output_endpoint: str,
        metrics: Metrics,
        context: zmq.Context,
        supervisor: Supervisor,
    ) -> None:
        self.s, self.output_endpoint, self.metrics = settings, output_endpoint, metrics
        self.ctx, self.supervisor = context, supervisor
        self.viewer: Viewer | None = None

    def start(self) -> None:
        from sbd_stream.security import CurveSettings
        from sbd_stream.sinks.viewer.server import Viewer

        s = self.s
        own = s.publish.curve.secret_key_file  # subscribe with the service's own key pair
        curve = (
            CurveSettings(enabled=True, secret_key_file=own, server_public_key_file=own)
            if s.publish.curve.enabled
            else None  # CURVE off: no key file, and enabled=True without one is refused by the settings
        )
        host = "127.0.0.1" if s.metrics.host in ("0.0.0.0", "", "::") else s.metrics.host
        port = self.metrics.port
        url = f"http://{host}:{port}/metrics" if s.metrics.enabled and port is not None else None
        self.viewer = Viewer(
            s.viewer,
            output_endpoint=self.output_endpoint,
            metrics_url=url,
            curve=curve,
            context=self.ctx,
            supervisor=self.supervisor,
            detector=s.detector,  # the scale bar's pixel size when a detector sends no metadata
        )
        self.viewer.start()

    def raw(self, frame: Frame) -> None:
        if self.viewer is not None:
            self.viewer.offer_raw(frame)

    def series_arrived(self, msg: SeriesMessage) -> None:
        """A ``series_start`` in its place among the raw frames: the tap's next frame of its acquisition
        starts a new raw series. Told by numbers and ``ts`` alone, a re-arm whose numbers start above 0
        with a ``ts`` not later (a DECTRIS-style clock) left the raw panel on the old series."""
        if self.viewer is not None and msg.topic == TOPIC_SERIES_START:
            self.viewer.raw_series_start(msg.header.acq, msg.header.ts, msg.header.meta)

    def stop(self) -> None:
        if self.viewer is not None:
            self.viewer.close()
