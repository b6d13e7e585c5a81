"""The one place that turns settings into a pipeline's parts: engines, source, worker pool, sinks.

Why one builder: ``serve``, ``replay``, ``demo``, the benchmarks and the tests all need the same
wiring (queue and batcher under the backpressure policy, recorder and publisher as the settings say,
the viewer tap, one evidence history shared by all workers); built in one function, a new setting or
output is wired once and ``Pipeline`` stays a lifecycle of parts it is handed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import zmq

from sbd_stream.config import BackpressurePolicy, ServiceSettings, SocketMode
from sbd_stream.engines.card import live_engine
from sbd_stream.engines.denoiser import Denoiser
from sbd_stream.frames import Frame, FrameQueue
from sbd_stream.metrics import Metrics
from sbd_stream.metrics_summary import status_line, summary
from sbd_stream.service.backlog import Backlog
from sbd_stream.service.batch import BatchStage, dose_warning
from sbd_stream.service.batching import Batcher
from sbd_stream.service.endpoint_error import EndpointError, RecordDirError
from sbd_stream.service.evidence_history import EvidenceHistory
from sbd_stream.service.pipeline import Intake, Pipeline, Source
from sbd_stream.service.sink import PublisherSink, RecorderSink, Sink, ViewerSink
from sbd_stream.service.workers import WorkerPool, WorkerSpec, plan_workers
from sbd_stream.sinks.publisher import Publisher
from sbd_stream.sinks.recorder import Recorder
from sbd_stream.sinks.writable import folder_problem
from sbd_stream.sources.receiver import Receiver, endpoint_problem
from sbd_stream.supervisor import Supervisor, wait_running

__all__ = [
    "EndpointError",
    "RecordDirError",
    "SourceFactory",
    "build_pipeline",
    "check_endpoints",
    "check_record_dir",
    "load_stage",
    "load_stages",
    "run_replay",
    "serve",
    "worker_specs",
]

SourceFactory = Callable[[Intake, Supervisor], Source]
"""Makes the pipeline's source, given where its frames go (the intake) and the service's supervisor."""

Stages = BatchStage | Denoiser | Sequence[BatchStage]


def check_endpoints(s: ServiceSettings, receiver: bool = True) -> None:
    """Refuse a malformed publish (and, with ``receiver``, ingest) endpoint before any socket opens, and
    a record folder that cannot be written (``check_record_dir``): what the service sends to and writes
    into, checked before the engine loads by ``serve`` and ``replay``.

    Before, not at bind: the publisher warns that a bound endpoint is "reachable from other machines"
    before binding it, which for ``foo`` is no news but noise.
    """
    wanted = [("publish.endpoint", s.publish.endpoint, s.publish.mode)] if s.publish.enabled else []
    if receiver:
        wanted.append(("ingest.endpoint", s.ingest.endpoint, s.ingest.mode))
    for setting, endpoint, mode in wanted:
        problem = endpoint_problem(endpoint, binds=mode is SocketMode.bind)
        if problem:
            raise EndpointError(setting, endpoint, problem)
    check_record_dir(s)


def check_record_dir(s: ServiceSettings) -> None:
    """With recording on, a ``record.directory`` where no file can be created is a ``RecordDirError``.

    Tried (the folder made, a file created in it, both removed again), not looked up: a read-only
    parent or a path that is a file ended ``serve`` in a traceback once the engine had loaded, and an
    existing read-only folder gave a healthy-looking service that dropped every recording.
    """
    if not s.record.enabled:
        return
    problem = folder_problem(s.record.directory)
    if problem:
        raise RecordDirError("record.directory", str(s.record.directory), problem)


@contextmanager
def opening(setting: str, endpoint: str) -> Iterator[None]:
    """A ZeroMQ bind / connect that fails (address in use, no such interface) as an ``EndpointError``.

    The port's holder from before the engine loaded (``cli.service_start.holding_ports``) is not closed
    here: the publisher and the receiver close it themselves right before their ``bind``
    (``httpd.drop_held``). Closed here, the port was free while they made their context and socket,
    read CURVE keys and started the authenticator, and another program could take it then (audit h35)."""
    try:
        yield
    except zmq.ZMQError as e:
        raise EndpointError(
            setting, endpoint, zmq.strerror(e.errno) if e.errno is not None else str(e)
        ) from e


def worker_specs(s: ServiceSettings) -> list[WorkerSpec]:
    """The engine workers these settings ask for on this machine (``denoise.workers`` / ``devices``)."""
    import torch

    d = s.denoise
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return plan_workers(d.workers, d.devices, d.device, d.threads_per_worker, cuda_devices=gpus)


def load_stage(s: ServiceSettings, spec: WorkerSpec | None = None) -> BatchStage:
    """The batch stage for these settings: engine, geometry of the detector, likelihood (may raise)."""
    d = s.denoise
    device = d.device if spec is None else spec.device
    den = Denoiser.load(
        d.engine,
        d.model or live_engine(device),  # the fast engine on a CPU (engines/card.py)
        device,
        tile=d.tile,
        margin=d.margin,
        batch=max(16, d.batch_frames),
        threads=None if spec is None else spec.threads,
    )
    return BatchStage(den, s.detector, d.likelihood, d.bin_tolerance, d.upsample, d.orientations)


def load_stages(s: ServiceSettings) -> list[BatchStage]:
    """One batch stage (its own engine instance, device and threads) per engine worker."""
    stages = [load_stage(s, spec) for spec in worker_specs(s)]
    light_torch(stages)
    return stages


def light_torch(stages: Sequence[BatchStage]) -> None:
    """One torch thread when every engine is ONNX Runtime on a CPU.

    Why: torch then only bins, normalises and interpolates (a few ms per frame); its OpenMP threads,
    spinning against ONNX Runtime's own pool and the service's receiver and recorder on the same cores,
    cost more than they save. Measured in the 1200-frame demo on 2 cores: live lane 13.5 -> 17 frames/s,
    p99 0.30 -> 0.18 s. A torch engine keeps its threads (it is the engine).
    """
    import torch

    if stages and all(st.device.type == "cpu" and st.denoiser.engine.kind != "torch" for st in stages):
        torch.set_num_threads(1)


def _as_stages(s: ServiceSettings, stage: Stages | None) -> list[BatchStage]:
    if stage is None:
        return load_stages(s)
    if isinstance(stage, Denoiser):
        d = s.denoise
        return [BatchStage(stage, s.detector, d.likelihood, d.bin_tolerance, d.upsample, d.orientations)]
    return [stage] if isinstance(stage, BatchStage) else list(stage)


def receiver_source(s: ServiceSettings, metrics: Metrics, context: zmq.Context) -> SourceFactory:
    """The live receiver of ``s.ingest`` (any dialect), its socket opened when built."""

    def make(intake: Intake, supervisor: Supervisor) -> Source:
        from sbd_stream.sources.receiver import open_receiver

        return open_receiver(s.ingest, metrics, intake.frame, intake.series, context, supervisor)

    return make


def build_pipeline(
    settings: ServiceSettings,
    stage: Stages | None = None,
    *,
    source: SourceFactory | Literal["receiver"] | None = "receiver",
    metrics: Metrics | None = None,
    context: zmq.Context | None = None,
) -> Pipeline:
    """A pipeline for ``settings``: ``stage`` (one batch stage per worker, or a loaded denoiser; default:
    loaded from the settings), ``source`` (the live receiver, a factory, or None to feed
    ``handle_frame`` by hand)."""
    s, m = settings, metrics or Metrics()
    check_endpoints(s, receiver=source == "receiver")
    ctx = context or zmq.Context.instance()
    stages = _as_stages(s, stage)
    sup = Supervisor(m, s.supervision.max_restarts, s.supervision.restart_window_s)
    first, d = stages[0], s.denoise
    m.engine.info({"engine_id": str(first.denoiser.engine_id), "device": str(first.denoiser.device)})
    report_geometry(first, m)
    policy = s.live_policy
    backlog = complete_lane(s, m)

    def skipped(frames: list[Frame]) -> None:
        m.frames_skipped.inc(len(frames))
        if backlog is not None:
            backlog.add(frames)

    queue = FrameQueue(
        s.ingest.queue_frames,
        drop_oldest=policy is BackpressurePolicy.latest,
        on_evict=lambda it: skipped([it]) if isinstance(it, Frame) else None,
        on_change=m.queue_depth.labels(queue="denoise").set,
    )
    live = policy is BackpressurePolicy.latest  # the live lane: the newest frame(s), one engine call's worth
    batch = s.lanes.live_batch_frames if live else d.batch_frames
    batcher = Batcher(queue, batch, d.batch_timeout_ms, policy, skipped)
    sinks = make_sinks(s, first, m, ctx, sup, stages)
    intake = Intake(queue, [], m)
    specs = worker_specs(s)
    if len(specs) != len(stages):  # stages built by the caller: describe them as they are
        specs = [WorkerSpec(i, str(st.device), None) for i, st in enumerate(stages)]
    n_ev = first.evidence_frames  # one history for every worker: maps independent of who took a batch
    fan = intake.sinks

    def results_out(res: Any) -> None:  # a worker hands each batch's results to every sink
        for sink in fan:
            sink.result(res)

    def series_out(msg: Any) -> None:
        for sink in fan:
            sink.series_done(msg)

    pool = WorkerPool(
        stages,
        specs,
        batcher,
        m,
        sup,
        results_out,
        series_out,
        EvidenceHistory(n_ev) if n_ev > 0 else None,
        backlog,
        complete_batch=d.batch_frames,
    )
    make_source = receiver_source(s, m, ctx) if source == "receiver" else source
    try:
        with opening("ingest.endpoint", s.ingest.endpoint):
            src = None if make_source is None else make_source(intake, sup)
    except EndpointError:
        release_unstarted(sinks, None)
        raise
    return Pipeline(s, source=src, intake=intake, pool=pool, sinks=sinks, metrics=m, supervisor=sup)


def complete_lane(s: ServiceSettings, m: Metrics) -> Backlog | None:
    """The complete lane's backlog when both lanes are on (``lanes``; docs/service.md "Two lanes") and
    frames are recorded.

    Why not without a recording: its frames go to the recording only (to live subscribers they are old
    news), so with ``record.enabled = false`` it denoised them into nothing, took the cores between
    bursts, held a stop for up to ``complete_timeout_s`` (16 s after Ctrl-C of a 2048^2 ``demo
    --no-record``) and warned that the frames it left "are recorded" for ``replay --offline`` (audit h33).
    """
    if not (s.lanes.live and s.lanes.complete):
        return None
    if not s.record.enabled:
        logging.getLogger(__name__).info(
            "complete lane off: its frames go to the recording only, and recording is off; frames the live "
            "lane skips are counted in sbd_frames_skipped_total"
        )
        return None
    return Backlog(int(s.lanes.backlog_mb * 1024**2), m.complete_backlog.set, m.frames_left_for_offline.inc)


def run_config(s: ServiceSettings, stages: Sequence[BatchStage]) -> dict[str, Any]:
    """The settings as the recording states them, ``denoise.upsample`` as it ran: ``auto`` is bilinear on
    a CPU and bicubic on a GPU, so "auto" alone did not say why a CPU recording differs from ``denoise``
    of its frames (bicubic). Workers that resolved it differently (a CPU and a GPU): a list, in order.
    ``denoise.engine_id`` likewise: the engine that ran (``name@hash/backend-precision``, as published
    with every output); the recording stated only the card and the setting (``auto``), not the backend
    or precision (recording audit h30)."""
    config = s.model_dump(mode="json")
    for key, per_stage in (
        ("upsample", [st.upsample for st in stages]),
        ("engine_id", [str(st.denoiser.engine_id) for st in stages]),
    ):
        config["denoise"][key] = per_stage[0] if len(set(per_stage)) == 1 else per_stage
    return config


def make_sinks(
    s: ServiceSettings,
    stage: BatchStage,
    m: Metrics,
    ctx: zmq.Context,
    sup: Supervisor,
    stages: Sequence[BatchStage] | None = None,
) -> list[Sink]:
    """Viewer (raw frames first, as received), publisher, recorder: what the settings turn on.
    ``stages``: every worker's (default: ``stage`` alone), for the recording's ``run_config``."""
    stages = stages or [stage]
    den = stage.denoiser
    sinks: list[Sink] = []
    publisher = None
    if s.publish.enabled:
        with opening("publish.endpoint", s.publish.endpoint):
            publisher = Publisher(s.publish, m, str(den.engine_id), supervisor=sup)  # its own context
    if s.viewer.enabled and publisher is not None:
        sinks.append(ViewerSink(s, publisher.endpoint, m, ctx, sup))
    if publisher is not None:
        sinks.append(PublisherSink(publisher))
    if s.record.enabled:
        rec = Recorder(
            s.record,
            m,
            card=dict(den.card),
            run_config=run_config(s, stages),
            queue_frames=s.ingest.record_queue_frames,
            sampling=stage.geometry.describe(),
            supervisor=sup,
        )
        sinks.append(RecorderSink(rec, s.record.record_denoised, s.record.record_llr))
    return sinks


def report_geometry(stage: BatchStage, m: Metrics) -> None:
    """Bin, dose factor and an out-of-range dose as gauges (and a warning once)."""
    g = stage.geometry
    m.bin_factor.set(g.bin)
    m.dose_factor.set(g.dose_factor)
    m.dose_out_of_range.set(0 if g.dose_in_range else 1)
    if not g.dose_in_range:
        msg = dose_warning(g.detector.dose_per_area, g.dose_factor, g.dose_range)
        logging.getLogger(__name__).warning("%s (sbd_dose_out_of_range = 1)", msg)


def release_unstarted(sinks: Sequence[Sink], source: Source | None) -> None:
    """Close the sockets of a receiver and publisher whose threads never ran (they close their own)."""
    if isinstance(source, Receiver):
        source.close()  # a no-op once started
    for sink in sinks:
        if isinstance(sink, PublisherSink) and sink.publisher._thread is None:  # never started
            sink.publisher.release_unstarted()


def start(pipe: Pipeline) -> None:
    """``pipe.start()``; a metrics or viewer port that cannot be bound (in use, no such host) is an
    ``EndpointError`` once what had started is stopped again (the metrics server is started first, so
    a busy metrics port leaves nothing running)."""
    try:
        pipe.start()
    except OSError as e:
        s, metrics_up = pipe.settings, pipe.metrics.port is not None
        release_unstarted(pipe.sinks, pipe.source)
        pipe.stop(timeout=1.0)
        reason = e.strerror or str(e)
        if s.metrics.enabled and not metrics_up:
            raise EndpointError("metrics.port", f"{s.metrics.host}:{s.metrics.port}", reason) from e
        if s.viewer.enabled:
            raise EndpointError("viewer.port", f"{s.viewer.host}:{s.viewer.port}", reason) from e
        raise


def serve(
    settings: ServiceSettings,
    stop: threading.Event,
    status: Any = None,
    status_every_s: float = 2.0,
    stage: Stages | None = None,
) -> dict[str, Any]:
    """Run the live service until ``stop`` is set, then drain; returns the final counters."""
    pipe = build_pipeline(settings, stage)
    start(pipe)
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
    stage: Stages,
    path: Path,
    realtime: bool = False,
    limit: int | None = None,
    metrics: Metrics | None = None,
    settle_s: float = 0.0,
    stop: threading.Event | None = None,
) -> tuple[Pipeline, float, int]:
    """Run a recording through the pipeline; returns (pipeline, seconds, frames fed). ``stop`` ends the
    feed early; what was fed is then drained and recorded as in a normal end (a KeyboardInterrupt in the
    middle of that drain aborted the process and left the recording open-for-write).

    ``settle_s``: wait this long after the output socket is bound before feeding the first frame, so
    that subscribers already dialling in are joined (ZeroMQ PUB drops what it sends before a SUB's
    subscription arrives: they would miss ``series_start`` and the first frames)."""
    from sbd_stream.sources.replay import ReplaySource, check_recording

    max_payload = settings.ingest.max_payload_bytes
    check_recording(path, max_payload)  # a part declaring implausible sizes: refused before anything starts
    pipe = build_pipeline(settings, stage, source=None, metrics=metrics)
    start(pipe)
    if settle_s > 0:
        time.sleep(settle_s)
    intake = pipe.intake

    def on_frame(frame: Frame) -> None:
        intake.metrics.frames_received.inc()  # the live receiver counts these; here the file is the source
        intake.frame(frame)

    # run on this thread (not as the pipeline's source): the file's errors reach the caller as before
    # rows whose ts names no date are skipped and counted as sbd_frames_malformed_total{reason="bad_ts"}
    src = ReplaySource(
        path, on_frame, intake.series, intake.queue, realtime, limit, max_payload, stop, intake.metrics
    )
    t0 = time.perf_counter()
    try:
        src.run()
    finally:  # a part that fails half-way (RecordingError, OSError) still stops the pipeline's threads
        pipe.stop(timeout=max(settings.stop_timeout_s, 600.0))
    return pipe, time.perf_counter() - t0, src.n_sent
