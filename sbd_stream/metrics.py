"""Prometheus metrics of one service instance (its own registry, so tests can run several).

Every exported name is listed in docs/service.md; dashboards must only reference those.
"""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

STAGES = ("decode", "queue", "batch", "denoise", "likelihood", "publish", "record")
QUEUES = ("denoise", "record", "publish")


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
        self.frames_recorded = Counter(
            "sbd_frames_recorded", "Frames written to HDF5, by kind", ["kind"], registry=r
        )
        self.frames_skipped = Counter(
            "sbd_frames_skipped", "Frames not denoised under the 'latest' policy", registry=r
        )
        self.frames_malformed = Counter(
            "sbd_frames_malformed", "Messages dropped by validation, by reason", ["reason"], registry=r
        )
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
            "sbd_record_dropped", "Frames NOT recorded (recorder queue full or disk error)", registry=r
        )
        self.record_errors = Counter(
            "sbd_record_errors", "Recorder I/O errors (e.g. disk full), by kind", ["kind"], registry=r
        )
        self.record_direct_chunks = Counter(
            "sbd_record_direct_chunks",
            "Raw frames stored as the detector's bitshuffle-LZ4 chunk, without recompressing",
            registry=r,
        )
        self.denoise_overflow = Counter(
            "sbd_denoise_overflow",
            "Frames not denoised because the lossless denoise queue was full (data loss)",
            registry=r,
        )
        self.denoise_errors = Counter("sbd_denoise_errors", "Batches that failed to denoise", registry=r)
        self.queue_depth = Gauge("sbd_queue_depth", "Frames waiting, by queue", ["queue"], registry=r)
        self.batch_size = Histogram(
            "sbd_batch_frames", "Frames per denoiser batch", buckets=(1, 2, 4, 8, 16, 32), registry=r
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
        self.engine = Info("sbd_engine", "Denoising engine in use", registry=r)
        for q in QUEUES:
            self.queue_depth.labels(queue=q).set(0)
        for s in STAGES:
            self.stage_latency.labels(stage=s)
        # export labelled series at zero from the start, so dashboards and rate() see them
        for t in ("denoised", "llr", "series_start", "series_end"):
            self.frames_published.labels(topic=t)
            self.publish_dropped.labels(topic=t)
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
        self._server: Any = None
        self._lock = threading.Lock()

    def serve(self, host: str = "127.0.0.1", port: int = 9105) -> int:
        """Start the /metrics HTTP endpoint; returns the port (useful when ``port`` is 0)."""
        with self._lock:
            if self._server is None:
                server, _thread = start_http_server(port, addr=host, registry=self.registry)
                self._server = server
            return int(self._server.server_port)

    def shutdown(self) -> None:
        with self._lock:
            if self._server is not None:
                self._server.shutdown()
                self._server.server_close()
                self._server = None

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """Current sample value (for tests, summaries and the demo status line)."""
        v = self.registry.get_sample_value(name, labels or {})
        return 0.0 if v is None else float(v)


EXPORTED_NAMES = (
    "sbd_frames_received_total",
    "sbd_frames_denoised_total",
    "sbd_frames_published_total",
    "sbd_publish_dropped_total",
    "sbd_frames_recorded_total",
    "sbd_frames_skipped_total",
    "sbd_frames_malformed_total",
    "sbd_frames_duplicate_total",
    "sbd_frames_out_of_order_total",
    "sbd_frames_missing_total",
    "sbd_sequence_gaps_total",
    "sbd_sequence_restarts_total",
    "sbd_series_messages_total",
    "sbd_record_dropped_total",
    "sbd_record_errors_total",
    "sbd_record_direct_chunks_total",
    "sbd_denoise_overflow_total",
    "sbd_denoise_errors_total",
    "sbd_queue_depth",
    "sbd_batch_frames",
    "sbd_stage_latency_seconds",
    "sbd_end_to_end_latency_seconds",
    "sbd_engine_info",
    "sbd_dose_out_of_range",
    "sbd_dose_factor",
    "sbd_bin_factor",
)


def total(m: Metrics, name: str) -> float:
    """Sum of a metric's samples over all label values."""
    return sum(s.value for metric in m.registry.collect() for s in metric.samples if s.name == name)


def status_line(m: Metrics, elapsed: float) -> str:
    """The one-line progress report ``serve`` prints every few seconds."""
    n = m.value("sbd_frames_received_total")
    return (
        f"{elapsed:7.1f}s  in {n:.0f} ({n / max(elapsed, 1e-9):.1f}/s)  "
        f"denoised {m.value('sbd_frames_denoised_total'):.0f}  "
        f"skipped {m.value('sbd_frames_skipped_total'):.0f}  "
        f"malformed {total(m, 'sbd_frames_malformed_total'):.0f}  "
        f"missing {m.value('sbd_frames_missing_total'):.0f}  "
        f"queue {m.value('sbd_queue_depth', {'queue': 'denoise'}):.0f}"
    )


SUMMARY_NAMES = (
    "sbd_frames_received_total",
    "sbd_frames_denoised_total",
    "sbd_frames_skipped_total",
    "sbd_frames_duplicate_total",
    "sbd_frames_missing_total",
    "sbd_sequence_restarts_total",
    "sbd_record_dropped_total",
    "sbd_denoise_overflow_total",
    "sbd_denoise_errors_total",
)


def summary(m: Metrics, elapsed: float) -> dict[str, Any]:
    """Final counters of a run (what ``serve`` / ``replay`` print and return)."""
    out: dict[str, Any] = {"seconds": elapsed}
    out.update({n.removeprefix("sbd_").removesuffix("_total"): total(m, n) for n in SUMMARY_NAMES})
    out["malformed"] = total(m, "sbd_frames_malformed_total")
    out["published"] = total(m, "sbd_frames_published_total")
    out["recorded_raw"] = m.value("sbd_frames_recorded_total", {"kind": "raw"})
    return out
