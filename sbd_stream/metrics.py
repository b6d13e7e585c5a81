"""Prometheus metrics of one service instance (its own registry, so tests can run several).

Every exported name is listed in docs/service.md; dashboards must only reference those. The HTTP
endpoint serves ``/metrics`` and ``/healthz`` (per-stage liveness from the supervisor) on one port,
so a load balancer, systemd watchdog or Kubernetes probe needs nothing else.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from sbd_stream import __version__, metric_names
from sbd_stream.httpd import local_url
from sbd_stream.metric_names import (  # noqa: F401 - the names' documented home
    EXPORTED_NAMES,
    HELP_BLANK,
    HELP_DOSE_RATIO,
    HELP_EDGE,
    HELP_FIXED,
    HELP_LEFT_OUT,
    HELP_MISMATCH,
    HELP_NOT_FLAT,
    LAZY_NAMES,
    MALFORMED_REASONS,
)
from sbd_stream.metrics_http import MetricsServer
from sbd_stream.open_files import OpenFilesCheck

_log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_LANE_BUCKETS = (*_LATENCY_BUCKETS, 60.0, 120.0, 300.0, 600.0, 1800.0)  # the complete lane waits minutes
_BATCH_BUCKETS = (0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5, 12.5, 16.5, 24.5, 32.5, 48.5, 64.5)
"""Bounds half-way between frame counts: each count up to 8 has a bucket of its own with the count in
its middle, so ``histogram_quantile`` reads n (p50) to n + 0.4 (p90) for batches of n frames; with
bounds at 1, 2, 4 ... it read 0.9 for batches of one frame (interpolated from 0) and 3.8 for three."""

STAGES = ("decode", "queue", "batch", "denoise", "likelihood", "publish", "record")
QUEUES = ("denoise", "record", "publish")
SUPERVISED_STAGES = ("receiver", "denoise", "publisher", "recorder", "metrics", "viewer")
"""Threads run by sbd_stream.supervisor (the same list as ``supervisor.STAGES``)."""


class Metrics:
    """Counters, gauges and histograms of the pipeline; thread-safe (prometheus_client locks)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.frames_received = Counter("sbd_frames_received", "Valid frames decoded by ingest", registry=r)
        self.frames_denoised = Counter("sbd_frames_denoised", "Frames through the denoiser", registry=r)
        self.frames_published = Counter(
            "sbd_frames_published", "Output messages sent, by topic", ["topic"], registry=r
        )
        self.publish_dropped = Counter(
            "sbd_publish_dropped",
            "Output messages dropped (slow subscriber or full publish queue)",
            ["topic"],
            registry=r,
        )
        self.publish_handshake_failures = Counter(
            "sbd_publish_handshake_failures",
            "Subscribers refused at the handshake (refused: CURVE key not allowed; mismatch: other)",
            ["cause"],
            registry=r,
        )
        self.publish_subscriber_full = Counter(
            "sbd_publish_subscriber_full",
            "Frames that found a subscriber's pipe full: it missed them (and, uncounted, some after)",
            ["topic"],
            registry=r,
        )
        self.publish_meta_dropped = Counter(
            "sbd_publish_meta_dropped",
            "Outputs sent without the producer's meta: their header passed 64 KiB (meta.meta_dropped)",
            ["topic"],
            registry=r,
        )
        self.frames_recorded = Counter(
            "sbd_frames_recorded", "Frames written to HDF5, by kind", ["kind"], registry=r
        )
        self.frames_skipped = Counter(
            "sbd_frames_skipped", "Frames the live lane skipped for newer ones", registry=r
        )
        self.frames_malformed = Counter(
            "sbd_frames_malformed", "Messages dropped by validation, by reason", ["reason"], registry=r
        )
        for reason in MALFORMED_REASONS:
            self.frames_malformed.labels(reason=reason)
        self.frames_duplicate = Counter("sbd_frames_duplicate", "Repeated sequence numbers", registry=r)
        self.frames_out_of_order = Counter(
            "sbd_frames_out_of_order", "Late frames (kept) whose sequence number went back", registry=r
        )
        self.frames_gap = Counter("sbd_frames_missing", "Frames missing from sequence gaps", registry=r)
        self.gaps = Counter("sbd_sequence_gaps", "Gap events (sequence jumped forward)", registry=r)
        self.restarts = Counter(
            "sbd_sequence_restarts", "Restarts (new acquisition or sequence went back)", registry=r
        )
        self.series = Counter("sbd_series_messages", "Series messages, by topic", ["topic"], registry=r)
        self.record_dropped = Counter(
            "sbd_record_dropped",
            "Items NOT recorded, each raw, denoised or llr frame one (recorder queue full, disk error, or "
            "still queued when a stop ran out of time)",
            registry=r,
        )
        self.record_errors = Counter(
            "sbd_record_errors", "Recorder I/O errors (e.g. disk full), by kind", ["kind"], registry=r
        )
        self.record_direct_chunks = Counter(
            "sbd_record_direct_chunks",
            "Raw frames stored as the detector's bitshuffle-LZ4 chunk, without recompressing",
            registry=r,
        )
        self.recorded_clipped_pixels = Counter(
            "sbd_recorded_clipped_pixels",
            "Denoised pixels beyond the recording dtype's finite range (float16: +-65504), clipped to it",
            registry=r,
        )
        self.published_clipped_pixels = Counter(
            "sbd_published_clipped_pixels", "Published pixels clipped to float16's +-65504", registry=r
        )
        self.denoise_overflow = Counter(
            "sbd_denoise_overflow",
            "Frames not denoised because the lossless denoise queue was full (data loss)",
            registry=r,
        )
        self.denoise_errors = Counter("sbd_denoise_errors", "Batches that failed to denoise", registry=r)
        self.queue_depth = Gauge("sbd_queue_depth", "Frames waiting, by queue", ["queue"], registry=r)
        self.batch_size = Histogram(
            "sbd_batch_frames", "Frames per denoiser batch", buckets=_BATCH_BUCKETS, registry=r
        )
        self.stage_latency = Histogram(
            "sbd_stage_latency_seconds",
            "Time spent per stage",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.e2e_latency = Histogram(
            "sbd_end_to_end_latency_seconds",
            "From receipt of a raw frame to its denoised frame being handed to ZeroMQ",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.lane_latency = Histogram(
            "sbd_lane_latency_seconds",
            "From receipt of a raw frame to its denoised frame leaving the engine, by lane (live, complete)",
            ["lane"],
            buckets=_LANE_BUCKETS,
            registry=r,
        )
        self.frames_completed = Counter(
            "sbd_frames_completed",
            "Frames the live lane skipped, denoised later by the complete lane",
            registry=r,
        )
        self.complete_backlog = Gauge(
            "sbd_complete_backlog_frames", "Skipped frames waiting for the complete lane", registry=r
        )
        self.frames_left_for_offline = Counter(
            "sbd_frames_left_for_offline",
            "Frames not denoised, left for offline (raw recorded; replay --offline): skipped frames the "
            "complete lane could not hold or finish, or frames still queued when a stop ran out of time",
            registry=r,
        )
        for lane in ("live", "complete"):
            self.lane_latency.labels(lane=lane)
        self.engine = Info("sbd_engine", "Denoising engine in use", registry=r)
        Gauge("sbd_starting", metric_names.HELP_STARTING, registry=r).set(0)  # 1: httpd.StartingHandler
        Gauge("sbd_build_info", metric_names.HELP_BUILD, ["version"], registry=r).labels(__version__).set(1)
        self._supervision_metrics(r)
        self._edge_metrics(r)
        self._worker_metrics(r)
        self.open_files = OpenFilesCheck()  # sbd_open_files{,_limit} at each scrape; warns near the limit
        r.register(self.open_files)
        for q in QUEUES:
            self.queue_depth.labels(queue=q).set(0)
        for s in STAGES:
            self.stage_latency.labels(stage=s)
        # export labelled series at zero from the start, so dashboards and rate() see them
        for t in ("denoised", "llr", "series_start", "series_end"):
            self.frames_published.labels(topic=t)
            self.publish_dropped.labels(topic=t)
            self.publish_meta_dropped.labels(topic=t)
            if t in ("denoised", "llr"):
                self.publish_subscriber_full.labels(topic=t)
        for c in ("refused", "mismatch"):
            self.publish_handshake_failures.labels(cause=c)
        for k in ("raw", "denoised", "llr"):
            self.frames_recorded.labels(kind=k)
        for k in ("disk_full", "io"):
            self.record_errors.labels(kind=k)
        for t in ("series_start", "series_end"):
            self.series.labels(topic=t)
        self.dose_out_of_range = Gauge(
            "sbd_dose_out_of_range",
            "1 while the stream's dose per area lies outside the engine's trained range (x1.25)",
            registry=r,
        )
        self.dose_factor = Gauge(
            "sbd_dose_factor", "The stream's dose per area / the engine's nominal dose", registry=r
        )
        self.bin_factor = Gauge(
            "sbd_bin_factor", "Detector pixels summed per working pixel, per axis", registry=r
        )
        self.dose_mismatch_frames = Counter("sbd_dose_mismatch_frames", HELP_MISMATCH, registry=r)
        self.measured_dose_ratio = Gauge("sbd_measured_dose_ratio", HELP_DOSE_RATIO, registry=r)
        self.blank_frames = Counter("sbd_blank_frames", HELP_BLANK, registry=r)
        self.evidence_left_out = Counter("sbd_evidence_frames_left_out", HELP_LEFT_OUT, registry=r)
        self.vacuum_not_flat_frames = Counter("sbd_vacuum_not_flat_frames", HELP_NOT_FLAT, registry=r)
        self.fixed_vacuum_mismatch_frames = Counter(
            "sbd_fixed_vacuum_mismatch_frames", HELP_FIXED, registry=r
        )
        self._server: MetricsServer | None = None
        self._lock = threading.Lock()

    def _supervision_metrics(self, r: CollectorRegistry) -> None:
        """Stage liveness (sbd_stream/supervisor.py): errors per item, restarts per thread, up."""
        self.stage_errors = Counter(
            "sbd_stage_errors",
            "Items a stage failed on (logged, set aside; the stage went on), by stage and exception",
            ["stage", "reason"],
            registry=r,
        )
        self.stage_restarts = Counter(
            "sbd_stage_restarts", "Stage threads that died and were restarted", ["stage"], registry=r
        )
        # no series at 0 for every stage: a stage this service does not run (a viewer never asked for)
        # read as down; a stage's series appears when the supervisor starts it, as on /healthz
        self.stage_up = Gauge("sbd_stage_up", "1 while the stage's loop runs", ["stage"], registry=r)
        for st in SUPERVISED_STAGES:
            self.stage_restarts.labels(stage=st)
        r.register(_StageItemErrors(self.stage_errors, self.stage_up))

    def _worker_metrics(self, r: CollectorRegistry) -> None:
        """Per engine worker (sbd_stream/service/workers.py): load, errors, and results held for order."""
        self.workers = Gauge("sbd_workers", "Engine workers running the batch stage", registry=r)
        self.worker_info = Gauge(
            "sbd_worker_info",
            "1 per engine worker: its device, threads and engine",
            ["worker", "device", "threads", "engine"],
            registry=r,
        )
        self.worker_frames = Counter(
            "sbd_worker_frames", "Frames denoised, by worker", ["worker"], registry=r
        )
        self.worker_batches = Counter(
            "sbd_worker_batches", "Batches denoised, by worker", ["worker"], registry=r
        )
        self.worker_busy = Counter(
            "sbd_worker_busy_seconds",
            "Seconds a worker spent in the batch stage (rate() = its load, 0..1)",
            ["worker"],
            registry=r,
        )
        self.worker_errors = Counter(
            "sbd_worker_errors", "Batches that failed on a worker", ["worker"], registry=r
        )
        self.frames_failed = Counter(
            "sbd_frames_failed",
            "Frames of batches whose denoising raised (named in the log; not denoised)",
            registry=r,
        )
        self.reorder_held = Gauge(
            "sbd_reorder_held", "Finished batches held back until an earlier one is done", registry=r
        )
        for c in (self.worker_frames, self.worker_batches, self.worker_busy, self.worker_errors):
            c.labels(worker="0")  # a service has at least one worker: export its series at zero

    def _edge_metrics(self, r: CollectorRegistry) -> None:
        """Input transport faults, pixels replaced at the edge and the recorder's bounds."""
        self.frames_nonfinite = Counter("sbd_frames_nonfinite", HELP_EDGE["nonfinite"], registry=r)
        self.pixels_nonfinite = Counter("sbd_pixels_nonfinite", HELP_EDGE["nonfinite_px"], registry=r)
        self.frames_saturated = Counter("sbd_frames_saturated", HELP_EDGE["saturated"], registry=r)
        self.pixels_saturated = Counter("sbd_pixels_saturated", HELP_EDGE["saturated_px"], registry=r)
        self.frames_hot = Counter("sbd_frames_hot", HELP_EDGE["hot"], registry=r)
        self.pixels_hot = Counter("sbd_pixels_hot", "Hot pixels replaced before denoising", registry=r)
        self.frames_too_bright = Counter("sbd_frames_too_bright", HELP_EDGE["too_bright"], registry=r)
        self.input_disconnects = Counter(
            "sbd_input_disconnects",
            "Input connections lost, by cause (closed: libzmq re-dials or the peer does; "
            "refused: libzmq dropped the peer for a protocol error such as an oversized part; "
            "handshake: ZMTP/CURVE handshake failed)",
            ["cause"],
            registry=r,
        )
        self.input_reconnects = Counter(
            "sbd_input_reconnects", "Input sockets re-created after a refused peer", registry=r
        )
        self.record_rolls = Counter(
            "sbd_record_rolls",
            "Recordings continued in a new file, by reason (size, shape, dtype, series_start, restart)",
            ["reason"],
            registry=r,
        )
        self.record_files_closed = Counter(
            "sbd_record_files_closed",
            "Recording files closed by the recorder's bounds or after an error (idle, max_open, error)",
            ["reason"],
            registry=r,
        )
        self.record_open_files = Gauge("sbd_record_open_files", "HDF5 recording files open", registry=r)
        for c in ("closed", "refused", "handshake"):
            self.input_disconnects.labels(cause=c)
        for k in ("size", "shape", "dtype", "series_start", "restart"):
            self.record_rolls.labels(reason=k)
        for k in ("idle", "max_open", "error"):
            self.record_files_closed.labels(reason=k)

    def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 9105,
        health: Callable[[], dict[str, Any]] | None = None,
        spawn: Callable[[Callable[[], None]], Any] | None = None,
    ) -> int:
        """Start the HTTP endpoint (/metrics, and /healthz from ``health``); returns the port.

        ``spawn`` runs the server loop (the pipeline passes its supervisor); default: a plain thread.
        """
        with self._lock:
            if self._server is None:
                self._server = MetricsServer(self.registry, host, port, health)
                _log.info("metrics on %s/metrics and /healthz", local_url(host, self._server.port))  # bound
                run = self._server.run
                if spawn is None:
                    threading.Thread(target=run, name="sbd-metrics", daemon=True).start()
                else:
                    spawn(run)
            return self._server.port

    @property
    def port(self) -> int | None:
        """The HTTP endpoint's port while it runs (``serve``), else None."""
        server = self._server
        return None if server is None else server.port

    def shutdown(self) -> None:
        with self._lock:
            if self._server is not None:
                self._server.close()
                self._server = None

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """Current sample value (for tests, summaries and the demo status line)."""
        v = self.registry.get_sample_value(name, labels or {})
        return 0.0 if v is None else float(v)


class _StageItemErrors(Collector):
    """``sbd_stage_item_errors_total{stage}``: ``sbd_stage_errors_total`` summed over ``reason``.

    Derived at each scrape rather than a second counter: every increment of the per-reason counter (by
    the supervisor, wherever it is called) counts here without a second call to forget. Every
    supervised stage and every stage that ran has its series, at 0 before its first error.
    """

    def __init__(self, errors: Counter, stage_up: Gauge) -> None:
        self.errors, self.stage_up = errors, stage_up

    def collect(self) -> Any:
        totals = dict.fromkeys(SUPERVISED_STAGES, 0.0)
        for sample in (s for fam in self.stage_up.collect() for s in fam.samples):
            totals.setdefault(sample.labels["stage"], 0.0)
        for sample in (s for fam in self.errors.collect() for s in fam.samples):
            if sample.name.endswith("_total"):
                stage = sample.labels["stage"]
                totals[stage] = totals.get(stage, 0.0) + sample.value
        fam = CounterMetricFamily(
            "sbd_stage_item_errors", "Items a stage failed on, by stage (all reasons)", labels=["stage"]
        )
        for stage, value in totals.items():
            fam.add_metric([stage], value)
        yield fam
