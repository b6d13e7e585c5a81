"""The service's lifecycle: a source -> intake -> worker pool of batch stages -> sinks, started and
stopped in one order (the complete lane's backlog is finished before the sinks close).

Why handed its parts: what a pipeline *is* (which source, which outputs, how many engine workers)
is decided once, from the settings, by ``service/build.py``; this module only runs the parts. Threads:
the source (the receiver or a file replay), N denoise workers each running its own batch stage
(``service/workers.py``: results released in frame order), and each sink's own thread, joined by
bounded queues and one stop sequence that drains them in order (source first, sinks last) so a
shutdown loses nothing that was already received, each part within its share of ``stop_timeout_s``
(``StopBudget``): what a part cannot finish in time is counted and logged, never silently lost.
Every thread runs under one ``Supervisor`` (errors per item counted and set aside, dead threads
restarted, ``/healthz``). All computation is in ``service.batch``; signal handling belongs to the CLI;
this module only offers ``stop()``.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from sbd_stream.config import ServiceSettings
from sbd_stream.frames import Frame, FrameQueue
from sbd_stream.log_limit import RateLimitedLog
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import TOPIC_SERIES_START, SeriesMessage
from sbd_stream.service.batch import BatchResult, BatchStage
from sbd_stream.service.batching import Batcher
from sbd_stream.service.dose_check import dose_check_for
from sbd_stream.service.edge import Edge
from sbd_stream.service.evidence_history import EvidenceHistory
from sbd_stream.service.sink import PublisherSink, RecorderSink, Sink, ViewerSink
from sbd_stream.service.workers import WorkerPool
from sbd_stream.sinks.publisher import Publisher
from sbd_stream.sinks.recorder import Recorder
from sbd_stream.supervisor import Supervisor, leave_running

if TYPE_CHECKING:
    from sbd_stream.engines.denoiser import Denoiser
    from sbd_stream.sinks.viewer.server import Viewer

log = logging.getLogger(__name__)

__all__ = ["CLOSE_S", "RUNNING_GRACE_S", "Intake", "Pipeline", "Source", "StopBudget"]

RUNNING_GRACE_S = 1.0
"""After everything was told to end: how long a thread may take to notice before it is named as left."""
CLOSE_S = 3.0
"""After the outputs' share: seconds a sink that gave up may take to finish the item in hand and close its
files (the 5 s margin the shipped unit keeps beyond stop_timeout_s + lanes.complete_timeout_s)."""


@dataclasses.dataclass(frozen=True)
class StopBudget:
    """How a stop shares ``stop_s`` (``stop_timeout_s``) out, in order (docs/service.md "The stop's budget").

    * the input and the workers: the first half (plus ``complete_s``, the complete lane's backlog); then
      what is still queued for denoising is left for offline (counted) and the workers take no more;
    * a batch in a worker's hands then: up to a sixth more, to finish it;
    * the outputs (publisher, recorder): at least the last third *after the workers ended*, and what the
      workers left over; then what is still queued for them is counted as NOT sent / recorded, the item
      in hand finished and every file closed (``CLOSE_S``).

    A recorder still writing had got what was left of one shared budget, 0.1 s after slow workers.
    The total stays ``stop_s + complete_s`` (+ ``CLOSE_S``), the bound the shipped unit's stop timeout fits.
    """

    stop_s: float
    complete_s: float = 0.0

    @property
    def workers_s(self) -> float:
        return self.stop_s / 2 + self.complete_s

    @property
    def in_flight_s(self) -> float:
        return self.stop_s / 6

    @property
    def outputs_s(self) -> float:
        return self.stop_s / 3

    @property
    def total_s(self) -> float:
        return self.stop_s + self.complete_s

    @property
    def bound_s(self) -> float:
        """The longest a stop takes: the shares, the outputs' ``CLOSE_S`` and the grace before a thread
        still running is named (``Pipeline._name_what_runs_on``): what a supervisor's stop timeout needs."""
        return self.total_s + CLOSE_S + RUNNING_GRACE_S


class Source(Protocol):
    """Where frames come from (``sources/receiver.py``, ``sources/replay.py``): a thread of its own."""

    def start(self) -> Any: ...

    def stop(self) -> None: ...

    def join(self, timeout: float | None = None) -> None: ...


class Intake:
    """The source side: raw frames to the sinks (recorder, taps) and, made finite, to the denoise queue.

    Never blocks: a full denoise queue counts the frame as ``denoise_overflow`` (its raw frame is
    recorded all the same). Series messages travel through the denoise queue so they stay behind the
    frames of their series. With likelihood evidence frames, ``evidence`` (the pool's history, set by
    the ``Pipeline``) decides each frame's evidence here, in arrival order, before the frame is queued:
    so it depends on what was received, not on when a worker got to it (``service/evidence_history.py``).
    ``edge`` (``service/edge.py``) replaces the pixels the denoiser must not see; the ``Pipeline`` gives
    it the configured dose, which its hot-pixel rule needs.
    """

    def __init__(self, queue: FrameQueue, sinks: list[Sink], metrics: Metrics) -> None:
        self.queue, self.sinks, self.metrics = queue, sinks, metrics
        self.evidence: EvidenceHistory | None = None
        self.edge = Edge(metrics)  # NaN / Inf and the dtype maximum; with a dose (Pipeline) hot pixels too
        self._rx = itertools.count()
        # one line per overload, not per frame: a slow CPU behind a 40 Hz detector wrote 40 lines a second
        self.overflow_log = RateLimitedLog(log)

    def frame(self, frame: Frame) -> None:
        frame.header = dataclasses.replace(frame.header, rx=next(self._rx))  # FrameHeader.rx: why
        for sink in self.sinks:
            sink.raw(frame)
        h = frame.header
        frame = self.edge(frame)  # what the denoiser sees: usable pixels only
        if self.evidence is not None:  # received: evidence for the frames after it, denoised or not
            self.evidence.keep(frame)
        if not self.queue.put(frame, frame.data.nbytes):
            if self.queue.closed:  # a source still delivering after the stop's time for it: not "full"
                self.metrics.frames_left_for_offline.inc()
                msg = "frame %s of %s arrived after the stop closed the denoise queue: left for offline"
                what = "frames after the stop"
                self.overflow_log.log("after-stop", logging.WARNING, what, msg, h.seq, h.acq)
                return
            self.metrics.denoise_overflow.inc()
            self.overflow_log.log(
                "denoise-overflow",
                logging.WARNING,
                "frames not denoised (denoise queue full)",
                "denoise queue full: frame %s of %s not denoised (counted in sbd_denoise_overflow_total; "
                "further ones are summed up once a minute)",
                h.seq,
                h.acq,
            )
        else:
            self.overflow_log.tick()  # an overload that ended is summed up by the next frame's arrival

    def series(self, msg: SeriesMessage) -> None:
        for sink in self.sinks:
            sink.series_arrived(msg)
        if self.evidence is not None and msg.topic == TOPIC_SERIES_START:
            self.evidence.forget(msg.header.acq)  # the new series is scored on its own frames only
        self.queue.put(msg, 0, force=True)


class Pipeline:
    """Runs built parts; ``service/build.py`` ``build_pipeline`` makes them from settings."""

    def __init__(
        self,
        settings: ServiceSettings,
        *,
        source: Source | None,
        intake: Intake,
        pool: WorkerPool,
        sinks: Sequence[Sink],
        metrics: Metrics,
        supervisor: Supervisor,
    ) -> None:
        """``sinks`` is shared with ``intake`` (raw frames) and the pool's emit (results); with vacuum
        estimated (likelihood on), a ``DoseCheck`` joins them (measured against configured dose)."""
        self.settings = settings
        self.source, self.intake, self.pool = source, intake, pool
        intake.evidence = pool.evidence  # evidence is decided at receipt (``Intake``)
        intake.edge = Edge(metrics, pool.stages[0].geometry.detector.vacuum_counts)  # hot pixels: the dose
        self.sinks = intake.sinks
        check = dose_check_for(pool.stages[0], metrics)
        self.sinks[:] = [*sinks, *([check] if check is not None else [])]
        self.metrics, self.supervisor = metrics, supervisor
        self.metrics_port: int | None = None
        self.started = threading.Event()  # every stage spawned (``start``): /healthz may answer ready
        self.stopped = threading.Event()

    # --- what tests, the demo and the CLI look at -------------------------------------------------------
    @property
    def stage(self) -> BatchStage:
        return self.pool.stages[0]  # all workers share one geometry and engine card

    @property
    def denoiser(self) -> Denoiser:
        return self.stage.denoiser

    @property
    def denoise_q(self) -> FrameQueue:
        return self.intake.queue

    @property
    def batcher(self) -> Batcher:
        return self.pool.batcher

    def _sink(self, kind: type[Sink]) -> Sink | None:
        return next((s for s in self.sinks if isinstance(s, kind)), None)

    @property
    def publisher(self) -> Publisher | None:
        s = self._sink(PublisherSink)
        return s.publisher if isinstance(s, PublisherSink) else None

    @property
    def recorder(self) -> Recorder | None:
        s = self._sink(RecorderSink)
        return s.recorder if isinstance(s, RecorderSink) else None

    @property
    def viewer(self) -> Viewer | None:
        s = self._sink(ViewerSink)
        return s.viewer if isinstance(s, ViewerSink) else None

    def add_sink(self, sink: Sink, first: bool = False) -> None:
        """Before ``start``: one more output (e.g. a ``FrameTap``)."""
        self.sinks.insert(0 if first else len(self.sinks), sink)

    # --- the source side ---------------------------------------------------------------------------------
    def handle_frame(self, frame: Frame) -> None:
        self.intake.frame(frame)

    def handle_series(self, msg: SeriesMessage) -> None:
        self.intake.series(msg)

    # --- the sinks side: called by the worker pool, in frame order ---------------------------------------
    def emit(self, res: BatchResult) -> None:
        """Hand a batch's results to every sink, each output named after its raw frame."""
        for sink in self.sinks:
            sink.result(res)

    def forward_series(self, msg: SeriesMessage) -> None:
        for sink in self.sinks:
            sink.series_done(msg)

    # --- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        """Metrics endpoint, sinks, workers, then the source (all supervised)."""
        sup, s = self.supervisor, self.settings
        if s.metrics.enabled:
            self.metrics_port = self.metrics.serve(
                s.metrics.host,
                s.metrics.port,
                health=self.health,
                spawn=lambda run: sup.spawn("metrics", run, name="sbd-metrics"),
            )
        for sink in self.sinks:
            sink.start()
        self.pool.start()
        if self.source is not None:
            self.source.start()
        self.started.set()

    def stop(self, timeout: float | None = None) -> None:
        """Drain and close: source, then the workers, then the sinks, each within its share of ``timeout``
        (``stop_timeout_s``; ``StopBudget``): safe to call twice.

        Why shares, not one deadline: the workers' join used to take the whole budget, and a recorder
        still writing got 0.1 s, was left inside h5py on a daemon thread, and the interpreter's exit
        deadlocked on h5py's lock (or aborted inside the engine), the recording left open-for-write and
        its queued frames uncounted. Now what cannot be done in time is given up, counted and logged
        once with its number; a thread that still does not end is named (``left_running``).
        """
        timeout = self.settings.stop_timeout_s if timeout is None else timeout
        complete = self.settings.lanes.complete_timeout_s if self.pool.backlog is not None else None
        b = StopBudget(timeout, complete or 0.0)
        t0 = time.monotonic()
        workers_end = t0 + b.workers_s
        if self.source is not None:
            self.source.stop()
            self.source.join(max(0.1, workers_end - time.monotonic()))
        self.pool.stop(complete)  # the complete lane finishes its backlog, in its own time
        self.denoise_q.close()
        self.pool.join(max(0.1, workers_end - time.monotonic()))
        if self.pool.running():  # what is still queued is left for offline; a batch in hand may finish
            self.pool.give_up(f"the stop's {b.workers_s:.2g} s for the workers ran out (stop_timeout_s)")
            self.pool.join(b.in_flight_s)
            if self.pool.running():  # still inside the engine: the process will end without that batch
                self.pool.write_off(f"its {b.in_flight_s:.2g} s to finish a batch ran out (stop_timeout_s)")
        outputs_end = max(t0 + b.total_s, time.monotonic() + b.outputs_s)  # the outputs' own time
        for sink in self.sinks:
            sink.stop()
        for sink in self.sinks:
            sink.join(max(0.1, outputs_end - time.monotonic()))
        late = [sink for sink in self.sinks if sink.running()]
        why = f"the stop's time for the outputs ran out (stop_timeout_s; {b.outputs_s:.2g} s or more)"
        for sink in late:  # stop taking items (counted, logged), finish the one in hand, close the files
            sink.give_up(why)
        close_end = time.monotonic() + CLOSE_S
        for sink in late:
            sink.join(max(0.1, close_end - time.monotonic()))
        self.intake.overflow_log.tick(force=True)
        self.metrics.shutdown()
        self._name_what_runs_on()
        self.stopped.set()

    def _name_what_runs_on(self) -> None:
        """Threads still running after the stop: one line, and ``left_running`` for the CLI, which then
        ends without the interpreter's shutdown (a daemon thread frozen inside libhdf5 or the engine
        hung it on h5py's lock, or aborted it)."""
        left = self.supervisor.running(grace_s=RUNNING_GRACE_S)
        if not left:
            return
        recorder = self.recorder
        named = []
        for stage, thread in left:
            what = stage
            if stage == "recorder" and recorder is not None and (paths := recorder.open_paths()):
                what += f" (writing; open for write: {', '.join(paths)}: `h5clear -s FILE` before reading)"
            elif stage.startswith("denoise"):
                what += " (inside its engine)"
            leave_running(thread, what)
            named.append(what)
        log.error("stop: still running when the stop's time was over: %s", "; ".join(named))

    def health(self) -> dict[str, Any]:
        """Per-stage liveness for ``/healthz`` (sbd_stream/supervisor.py); not ``ok`` (503, ``starting``)
        until ``start`` has spawned every stage and each thread has begun.

        Why: the metrics server starts first (a busy port then leaves nothing running), and its
        ``/healthz`` answered 200 with the metrics stage alone about 0.1 s before the sinks, workers and
        receiver were registered: a readiness probe sent frames to a service not yet receiving (h35)."""
        h = self.supervisor.health()
        if h["ok"] and not (
            self.started.is_set() and all(st["state"] != "starting" for st in h["stages"].values())
        ):
            h.update(ok=False, starting=True, doing="starting the pipeline's stages")
        return h
