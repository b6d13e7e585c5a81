"""The service's wiring: a frame source -> recorder + batcher -> batch stage -> publisher + recorder.

Threads: the source (the receiver or a file replay), N denoise workers each running its own batch
stage (``service/workers.py``: results released in frame order), the publisher and the recorder,
joined by bounded queues and one stop sequence that drains them in order (source first, recorder
last) so a shutdown loses nothing that was already received. Every thread runs under one
``Supervisor`` (errors per item counted and set aside, dead threads restarted, ``/healthz``);
``serve`` stops and reports the reason when a stage cannot go on. All computation is in
``service.batch``; signal handling belongs to the CLI; this module only offers ``stop()``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from sbd_stream.config import BackpressurePolicy, DenoiseSettings, ServiceSettings
from sbd_stream.engines.denoiser import Denoiser
from sbd_stream.frames import Frame, FrameQueue
from sbd_stream.metrics import Metrics, status_line, summary
from sbd_stream.protocol import TOPIC_DENOISED, TOPIC_LLR, TOPIC_SERIES_END, SeriesMessage, llr_columns
from sbd_stream.service.batch import BatchResult, BatchStage
from sbd_stream.service.batching import Batcher
from sbd_stream.service.edge import replace_nonfinite
from sbd_stream.service.evidence_history import EvidenceHistory
from sbd_stream.service.workers import WorkerPool, WorkerSpec, plan_workers
from sbd_stream.sinks.publisher import OutputItem, Publisher
from sbd_stream.sinks.recorder import Recorder, RecordItem
from sbd_stream.supervisor import Supervisor, wait_running

log = logging.getLogger(__name__)

__all__ = [
    "Pipeline",
    "load_stage",
    "load_stages",
    "run_replay",
    "serve",
    "status_line",
    "summary",
    "worker_specs",
]


class Pipeline:
    def __init__(
        self,
        settings: ServiceSettings,
        stage: BatchStage | Denoiser | Sequence[BatchStage],
        metrics: Metrics | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        """``stage``: a ready batch stage, one per engine worker, or a loaded denoiser to build one from."""
        self.s = settings
        if isinstance(stage, Denoiser):
            d = settings.denoise
            stage = BatchStage(stage, settings.detector, d.likelihood, d.bin_tolerance, d.upsample)
        self.stages: list[BatchStage] = [stage] if isinstance(stage, BatchStage) else list(stage)
        self.stage = stage = self.stages[0]  # all workers share one geometry and engine card
        self.metrics = metrics or Metrics()
        self.ctx = context or zmq.Context.instance()
        sv = settings.supervision
        self.supervisor = Supervisor(self.metrics, sv.max_restarts, sv.restart_window_s)
        m, d = self.metrics, settings.denoise
        den = stage.denoiser
        m.engine.info({"engine_id": str(den.engine_id), "device": str(den.device)})
        self._report_geometry()
        latest = d.policy is BackpressurePolicy.latest
        depth = m.queue_depth.labels(queue="denoise")
        self.denoise_q = FrameQueue(
            settings.ingest.queue_frames,
            drop_oldest=latest,
            on_evict=lambda _it: m.frames_skipped.inc(),
            on_change=depth.set,
        )
        self.batcher = Batcher(
            self.denoise_q, d.batch_frames, d.batch_timeout_ms, d.policy, m.frames_skipped.inc
        )
        self.recorder: Recorder | None = None
        if settings.record.enabled:
            self.recorder = Recorder(
                settings.record,
                m,
                card=dict(den.card),
                run_config=settings.model_dump(mode="json"),
                queue_frames=settings.ingest.record_queue_frames,
                sampling=stage.geometry.describe(),
                supervisor=self.supervisor,
            )
        self.publisher: Publisher | None = None
        if settings.publish.enabled:
            self.publisher = Publisher(settings.publish, m, str(den.engine_id), self.ctx, self.supervisor)
        self.ingest: Any = None
        self.frame_taps: list[Callable[[Frame], None]] = []  # non-blocking raw-frame observers (viewer)
        self.viewer: Any = None
        specs = worker_specs(settings)
        if len(specs) != len(self.stages):  # stages built by the caller: describe them as they are
            specs = [WorkerSpec(i, str(st.device), None) for i, st in enumerate(self.stages)]
        n_ev = stage.evidence_frames  # one history for every worker: maps independent of who took a batch
        self.pool = WorkerPool(
            self.stages,
            specs,
            self.batcher,
            m,
            self.supervisor,
            self._emit,
            self._forward_series,
            EvidenceHistory(n_ev) if n_ev > 0 else None,
        )
        self.stopped = threading.Event()

    @property
    def denoiser(self) -> Any:
        return self.stage.denoiser

    def _report_geometry(self) -> None:
        g, m = self.stage.geometry, self.metrics
        m.bin_factor.set(g.bin)
        m.dose_factor.set(g.dose_factor)
        m.dose_out_of_range.set(0 if g.dose_in_range else 1)
        if not g.dose_in_range:
            lo, hi = g.dose_range
            log.warning(
                "dose %.4g e/A^2 per frame is %.2fx the engine's nominal dose, outside its trained range "
                "%.2f-%.2fx: expect degraded denoising (sbd_dose_out_of_range = 1)",
                g.detector.dose_per_area,
                g.dose_factor,
                lo,
                hi,
            )

    # --- frame source side: never blocks ------------------------------------------------------------
    def handle_frame(self, frame: Frame) -> None:
        h = frame.header
        for tap in self.frame_taps:
            tap(frame)
        if self.recorder is not None:  # a DECTRIS bitshuffle-LZ4 chunk is stored without recompressing
            self.recorder.record("raw", h, frame.data, chunk=frame.chunk)  # as received, NaN and all
        frame = replace_nonfinite(frame, self.metrics)  # what the denoiser sees: finite pixels only
        if not self.denoise_q.put(frame, frame.data.nbytes):
            self.metrics.denoise_overflow.inc()
            log.warning("denoise queue full: frame %s of %s not denoised", h.seq, h.acq)

    def handle_series(self, msg: SeriesMessage) -> None:
        if msg.topic != TOPIC_SERIES_END and self.recorder is not None:
            self.recorder.submit(RecordItem("series_start", msg.header.acq, meta=msg.header.meta))
        # through the denoise queue so it stays behind the frames of its series
        self.denoise_q.put(msg, 0, force=True)

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self, live: bool = True) -> None:
        """Start the sinks and the worker; with ``live`` also the ZeroMQ ingest (all supervised)."""
        sup = self.supervisor
        if self.s.metrics.enabled:
            self.metrics_port = self.metrics.serve(
                self.s.metrics.host,
                self.s.metrics.port,
                health=self.health,
                spawn=lambda run: sup.spawn("metrics", run, name="sbd-metrics"),
            )
        if self.recorder is not None:
            self.recorder.start()
        if self.publisher is not None:
            self.publisher.start()
        self.pool.start()
        if live:
            from sbd_stream.sources.receiver import open_receiver  # any dialect: s.ingest.input

            self.ingest = open_receiver(
                self.s.ingest, self.metrics, self.handle_frame, self.handle_series, self.ctx, sup
            )
            self.ingest.start()
        if self.s.viewer.enabled and self.publisher is not None:
            from sbd_stream.security import CurveSettings
            from sbd_stream.sinks.viewer.server import Viewer

            own = self.s.publish.curve.secret_key_file  # subscribe with the service's own key pair
            curve = CurveSettings(enabled=True, secret_key_file=own, server_public_key_file=own)
            mhost = self.s.metrics.host
            mhost = "127.0.0.1" if mhost in ("0.0.0.0", "", "::") else mhost
            metrics_url = f"http://{mhost}:{self.metrics_port}/metrics" if self.s.metrics.enabled else None
            self.viewer = Viewer(
                self.s.viewer,
                output_endpoint=self.publisher.endpoint,
                metrics_url=metrics_url,
                curve=curve if self.s.publish.curve.enabled else None,
                context=self.ctx,
                supervisor=sup,
            )
            self.frame_taps.append(self.viewer.offer_raw)
            self.viewer.start()

    def stop(self, timeout: float | None = None) -> None:
        """Drain and close: source, then denoiser, then publisher and recorder (safe to call twice)."""
        timeout = self.s.stop_timeout_s if timeout is None else timeout
        end = time.monotonic() + timeout
        if self.viewer is not None:
            self.viewer.close()
        if self.ingest is not None:
            self.ingest.stop()
            self.ingest.join(max(0.1, end - time.monotonic()))
        self.pool.stop()
        self.denoise_q.close()
        self.pool.join(max(0.1, end - time.monotonic()))
        for sink in (self.publisher, self.recorder):
            if sink is not None:
                sink.stop()
        for sink in (self.publisher, self.recorder):
            if sink is not None:
                sink.join(max(0.1, end - time.monotonic()))
        self.metrics.shutdown()
        self.stopped.set()

    def health(self) -> dict[str, Any]:
        """Per-stage liveness for ``/healthz`` (sbd_stream/supervisor.py)."""
        return self.supervisor.health()

    # --- sinks side: called by the worker pool, in frame order ----------------------------------------
    def _forward_series(self, msg: SeriesMessage) -> None:
        if msg.topic == TOPIC_SERIES_END and self.recorder is not None:
            self.recorder.submit(RecordItem("series_end", msg.header.acq))
        if self.publisher is not None:
            h = msg.header
            self.publisher.submit(OutputItem(msg.topic, h.acq, ts=h.ts, meta=h.meta, n_frames=h.n_frames))

    def _emit(self, res: BatchResult) -> None:
        """Hand a batch's results to the sinks, each output named after its raw frame."""
        rec = self.recorder
        for i, h in enumerate(res.headers):
            if self.publisher is not None:
                self.publisher.publish(TOPIC_DENOISED, h, res.denoised[i], t_recv=res.t_recv[i])
            if rec is not None and self.s.record.record_denoised:
                rec.record("denoised", h, res.denoised[i])
            if res.likelihood is None or res.columns is None:
                continue
            if self.publisher is not None:
                ev = 0 if res.evidence_frames is None else int(res.evidence_frames[i])
                meta, table = llr_columns(res.columns[i], ev)
                self.publisher.publish(TOPIC_LLR, h, res.likelihood[i], meta, table)
            if rec is not None and self.s.record.record_llr:
                rec.record("llr", h, res.likelihood[i])


def worker_specs(s: ServiceSettings) -> list[WorkerSpec]:
    """The engine workers these settings ask for on this machine (``denoise.workers`` / ``devices``)."""
    import torch

    d = s.denoise
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return plan_workers(d.workers, d.devices, d.device, d.threads_per_worker, cuda_devices=gpus)


def load_stage(s: ServiceSettings, spec: WorkerSpec | None = None) -> BatchStage:
    """The batch stage for these settings: engine, geometry of the detector, likelihood (may raise)."""
    d: DenoiseSettings = s.denoise
    device = d.device if spec is None else spec.device
    den = Denoiser.load(
        d.engine,
        d.model,
        device,
        tile=d.tile,
        margin=d.margin,
        batch=max(16, d.batch_frames),
        threads=None if spec is None else spec.threads,
    )
    return BatchStage(den, s.detector, d.likelihood, d.bin_tolerance, d.upsample)


def load_stages(s: ServiceSettings) -> list[BatchStage]:
    """One batch stage (its own engine instance, device and threads) per engine worker."""
    return [load_stage(s, spec) for spec in worker_specs(s)]


def serve(
    settings: ServiceSettings,
    stop: threading.Event,
    status: Any = None,
    status_every_s: float = 2.0,
    stage: BatchStage | Sequence[BatchStage] | None = None,
) -> dict[str, Any]:
    """Run the live service until ``stop`` is set, then drain; returns the final counters."""
    pipe = Pipeline(settings, stage or load_stages(settings))
    pipe.start(live=True)
    m, sup = pipe.metrics, pipe.supervisor
    t0 = time.perf_counter()
    try:
        wait_running(stop, sup, "the service", status, lambda t: status_line(m, t), status_every_s)
    finally:
        pipe.stop()
    elapsed = time.perf_counter() - t0
    out = summary(m, elapsed)
    out["workers"] = pipe.pool.load(elapsed)
    out["failure"] = sup.failure  # None after a clean stop; the CLI exits non-zero otherwise
    return out


def run_replay(
    settings: ServiceSettings,
    stage: BatchStage | Denoiser | Sequence[BatchStage],
    path: Any,
    realtime: bool = False,
    limit: int | None = None,
    metrics: Metrics | None = None,
) -> tuple[Pipeline, float, int]:
    """Run a recording through the pipeline; returns (pipeline, seconds, frames fed)."""
    from sbd_stream.sources.replay import ReplaySource

    pipe = Pipeline(settings, stage, metrics)
    pipe.start(live=False)

    def on_frame(frame: Frame) -> None:
        pipe.metrics.frames_received.inc()  # the live receiver counts these; here the file is the source
        pipe.handle_frame(frame)

    src = ReplaySource(path, on_frame, pipe.handle_series, pipe.denoise_q, realtime, limit)
    t0 = time.perf_counter()
    src.run()
    pipe.stop(timeout=max(settings.stop_timeout_s, 600.0))
    return pipe, time.perf_counter() - t0, src.n_sent
