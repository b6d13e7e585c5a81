"""The service: a frame source -> recorder + batcher -> denoiser (-> likelihood) -> publisher + recorder.

Threads: the source (ZeroMQ ingest or file replay), one denoise worker, the publisher and the
recorder, joined by bounded queues and one stop sequence that drains them in order (source first,
recorder last) so a shutdown loses nothing that was already received. Signal handling belongs to the
CLI; this module only offers ``stop()``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch
import zmq

from sbd_stream.batching import Batcher
from sbd_stream.config import BackpressurePolicy, DenoiseSettings, ServiceSettings
from sbd_stream.ingest import Frame, FrameQueue, Ingest
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import TOPIC_DENOISED, TOPIC_LLR, TOPIC_SERIES_END, SeriesMessage
from sbd_stream.publisher import OutputItem, Publisher
from sbd_stream.recorder import Recorder, RecordItem

log = logging.getLogger(__name__)

MAX_HEADER_COLUMNS = 1000  # columns beyond this are not sent in the llr header (64 kB limit)


class DenoiseStage(Protocol):
    """What the pipeline needs of a denoiser (sbd_stream.denoiser.Denoiser has this shape)."""

    engine_id: str
    card: dict

    def denoise(self, frames: torch.Tensor) -> torch.Tensor: ...


class Pipeline:
    def __init__(
        self,
        settings: ServiceSettings,
        denoiser: DenoiseStage,
        metrics: Metrics | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        self.s = settings
        self.denoiser = denoiser
        self.metrics = metrics or Metrics()
        self.ctx = context or zmq.Context.instance()
        m, d = self.metrics, settings.denoise
        m.engine.info({"engine_id": str(denoiser.engine_id), "device": str(getattr(denoiser, "device", ""))})
        latest = d.policy is BackpressurePolicy.latest
        self.denoise_q = FrameQueue(
            settings.ingest.queue_frames,
            drop_oldest=latest,
            on_evict=lambda _it: m.frames_skipped.inc(),
        )
        self.batcher = Batcher(
            self.denoise_q, d.batch_frames, d.batch_timeout_ms, d.policy, m.frames_skipped.inc
        )
        self.recorder: Recorder | None = None
        if settings.record.enabled:
            self.recorder = Recorder(
                settings.record,
                m,
                card=dict(denoiser.card),
                run_config=settings.model_dump(mode="json"),
                queue_frames=settings.ingest.record_queue_frames,
            )
        self.publisher: Publisher | None = None
        if settings.publish.enabled:
            self.publisher = Publisher(settings.publish, m, str(denoiser.engine_id), self.ctx)
        self.likelihood: Any = None
        if d.likelihood:
            from sbd_stream.likelihood import LikelihoodConfig, LikelihoodStage

            dev = getattr(denoiser, "device", "cpu")
            params = dict(d.likelihood_params)
            # column sizes are set in Angstrom: take the pixel size the engine was trained at
            card_px = (getattr(denoiser, "card", None) or {}).get("pixel_size_A")
            if "pixel_size_A" not in params and card_px:
                params["pixel_size_A"] = float(card_px)
            self.likelihood = LikelihoodStage(LikelihoodConfig(**params), dev)
        self.ingest: Ingest | None = None
        self.frame_taps: list[Callable[[Frame], None]] = []  # non-blocking raw-frame observers (viewer)
        self.viewer: Any = None
        self._worker: threading.Thread | None = None
        self._stopping = threading.Event()
        self.stopped = threading.Event()

    # --- frame source side: never blocks ------------------------------------------------------------
    def handle_frame(self, frame: Frame) -> None:
        h = frame.header
        for tap in self.frame_taps:
            tap(frame)
        if self.recorder is not None:
            chunk = getattr(frame, "chunk", None)  # DECTRIS bitshuffle-LZ4, stored without recompressing
            self.recorder.submit(RecordItem("raw", h.acq, h.seq, h.ts, frame.data, chunk=chunk))
        if not self.denoise_q.put(frame, frame.data.nbytes):
            self.metrics.denoise_overflow.inc()
            log.warning("denoise queue full: frame %s of %s not denoised", h.seq, h.acq)
        self.metrics.queue_depth.labels(queue="denoise").set(len(self.denoise_q))

    def handle_series(self, msg: SeriesMessage) -> None:
        if msg.topic != TOPIC_SERIES_END and self.recorder is not None:
            self.recorder.submit(RecordItem("series_start", msg.header.acq, meta=msg.header.meta))
        # through the denoise queue so it stays behind the frames of its series
        self.denoise_q.put(msg, 0, force=True)

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self, live: bool = True) -> None:
        """Start the sinks and the worker; with ``live`` also the ZeroMQ ingest."""
        if self.s.metrics.enabled:
            self.metrics_port = self.metrics.serve(self.s.metrics.host, self.s.metrics.port)
        if self.recorder is not None:
            self.recorder.start()
        if self.publisher is not None:
            self.publisher.start()
        self._worker = threading.Thread(target=self._work, name="sbd-denoise", daemon=True)
        self._worker.start()
        if live:
            if self.s.ingest.dialect.value != "wire-v1":  # DECTRIS streams: sbd_stream/ingest_dectris.py
                from sbd_stream.ingest_dectris import DectrisIngest, DectrisIngestSettings

                ds = DectrisIngestSettings.from_ingest(self.s.ingest)
                self.ingest = DectrisIngest(  # type: ignore[assignment]
                    ds, self.metrics, self.handle_frame, self.handle_series, self.ctx
                )
            else:
                self.ingest = Ingest(
                    self.s.ingest, self.metrics, self.handle_frame, self.handle_series, self.ctx
                )
            self.ingest.start()
        if self.s.viewer.enabled and self.publisher is not None:
            from sbd_stream.viewer import attach

            self.viewer = attach(self, self.s.viewer.host, self.s.viewer.port)

    def stop(self, timeout: float | None = None) -> None:
        """Drain and close: source, then denoiser, then publisher and recorder."""
        timeout = self.s.stop_timeout_s if timeout is None else timeout
        end = time.monotonic() + timeout
        if self.viewer is not None:
            self.viewer.close()
        if self.ingest is not None:
            self.ingest.stop()
            self.ingest.join(max(0.1, end - time.monotonic()))
        self._stopping.set()
        self.denoise_q.close()
        if self._worker is not None:
            self._worker.join(max(0.1, end - time.monotonic()))
        for sink in (self.publisher, self.recorder):
            if sink is not None:
                sink.stop()
        for sink in (self.publisher, self.recorder):
            if sink is not None:
                sink.join(max(0.1, end - time.monotonic()))
        self.metrics.shutdown()
        self.stopped.set()

    # --- denoise worker ----------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            items = self.batcher.next_batch(0.1)
            if not items:
                if self._stopping.is_set() and self.batcher.idle():
                    return
                continue
            if not isinstance(items[0], Frame):
                self._forward_series(items[0])  # type: ignore[arg-type]
                continue
            try:
                self._denoise_batch(items)  # type: ignore[arg-type]
            except Exception:
                self.metrics.denoise_errors.inc()
                log.exception("denoising a batch of %d frames failed", len(items))
            self.metrics.queue_depth.labels(queue="denoise").set(len(self.denoise_q))

    def _forward_series(self, msg: SeriesMessage) -> None:
        if msg.topic == TOPIC_SERIES_END and self.recorder is not None:
            self.recorder.submit(RecordItem("series_end", msg.header.acq))
        if self.publisher is not None:
            h = msg.header
            self.publisher.submit(OutputItem(msg.topic, h.acq, ts=h.ts, meta=h.meta))

    def _denoise_batch(self, frames: list[Frame]) -> None:
        m = self.metrics
        t0 = time.perf_counter()
        for f in frames:
            m.stage_latency.labels(stage="queue").observe(t0 - f.t_recv)
        raw = torch.from_numpy(np.stack([f.data for f in frames]).astype(np.float32, copy=False))
        t1 = time.perf_counter()
        m.stage_latency.labels(stage="batch").observe(t1 - t0)
        out = self.denoiser.denoise(raw)
        den = out.detach().to("cpu", torch.float32).numpy()
        t2 = time.perf_counter()
        m.stage_latency.labels(stage="denoise").observe(t2 - t1)
        m.frames_denoised.inc(len(frames))
        m.batch_size.observe(len(frames))
        maps: np.ndarray | None = None
        cols: list[np.ndarray] | None = None
        if self.likelihood is not None:
            res = self.likelihood(raw.to(out.device), out)
            maps = res.map.detach().to("cpu", torch.float32).numpy()
            cols = [c.as_array() for c in res.columns]
            m.stage_latency.labels(stage="likelihood").observe(time.perf_counter() - t2)
        for i, f in enumerate(frames):
            h = f.header
            if self.publisher is not None:
                self.publisher.submit(
                    OutputItem(
                        TOPIC_DENOISED, h.acq, h.seq, h.ts, den[i], h.exposure_s, h.meta, t_recv=f.t_recv
                    )
                )
            if self.recorder is not None and self.s.record.record_denoised:
                self.recorder.submit(RecordItem("denoised", h.acq, h.seq, h.ts, den[i]))
            if maps is not None and cols is not None:
                table = np.round(cols[i][:MAX_HEADER_COLUMNS], 3).tolist()
                meta = {"n_columns": len(cols[i]), "columns_fields": ["row", "col", "llr", "region_mean"]}
                if self.publisher is not None:
                    self.publisher.submit(
                        OutputItem(TOPIC_LLR, h.acq, h.seq, h.ts, maps[i], h.exposure_s, meta, table)
                    )
                if self.recorder is not None and self.s.record.record_llr:
                    self.recorder.submit(RecordItem("llr", h.acq, h.seq, h.ts, maps[i]))


def load_denoiser(d: DenoiseSettings) -> DenoiseStage:
    """The lead's Denoiser, configured from the settings (imported here: it pulls in the engines)."""
    from sbd_stream.denoiser import Denoiser

    return Denoiser.load(
        d.engine, d.model, d.device, tile=d.tile, margin=d.margin, dose=d.dose, batch=max(16, d.batch_frames)
    )


def serve(
    settings: ServiceSettings,
    stop: threading.Event,
    status: Any = None,
    status_every_s: float = 2.0,
    denoiser: DenoiseStage | None = None,
) -> dict[str, Any]:
    """Run the live service until ``stop`` is set, then drain; returns the final counters."""
    pipe = Pipeline(settings, denoiser or load_denoiser(settings.denoise))
    pipe.start(live=True)
    m = pipe.metrics
    t0 = time.perf_counter()
    try:
        while not stop.wait(status_every_s):
            if status is not None:
                status(status_line(m, time.perf_counter() - t0))
    finally:
        pipe.stop()
    return summary(m, time.perf_counter() - t0)


def status_line(m: Metrics, elapsed: float) -> str:
    n = m.value("sbd_frames_received_total")
    return (
        f"{elapsed:7.1f}s  in {n:.0f} ({n / max(elapsed, 1e-9):.1f}/s)  "
        f"denoised {m.value('sbd_frames_denoised_total'):.0f}  "
        f"skipped {m.value('sbd_frames_skipped_total'):.0f}  "
        f"malformed {_sum(m, 'sbd_frames_malformed_total'):.0f}  "
        f"missing {m.value('sbd_frames_missing_total'):.0f}  "
        f"queue {m.value('sbd_queue_depth', {'queue': 'denoise'}):.0f}"
    )


def _sum(m: Metrics, name: str) -> float:
    return sum(s.value for metric in m.registry.collect() for s in metric.samples if s.name == name)


def summary(m: Metrics, elapsed: float) -> dict[str, Any]:
    names = (
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
    out: dict[str, Any] = {"seconds": elapsed}
    out.update({n.removeprefix("sbd_").removesuffix("_total"): _sum(m, n) for n in names})
    out["malformed"] = _sum(m, "sbd_frames_malformed_total")
    out["published"] = _sum(m, "sbd_frames_published_total")
    out["recorded_raw"] = m.value("sbd_frames_recorded_total", {"kind": "raw"})
    return out


def run_replay(
    settings: ServiceSettings,
    denoiser: DenoiseStage,
    path: Any,
    realtime: bool = False,
    limit: int | None = None,
    metrics: Metrics | None = None,
) -> tuple[Pipeline, float, int]:
    """Run a recording through the pipeline; returns (pipeline, seconds, frames fed)."""
    from sbd_stream.replay import ReplaySource

    pipe = Pipeline(settings, denoiser, metrics)
    pipe.start(live=False)

    def on_frame(frame: Frame) -> None:
        pipe.metrics.frames_received.inc()  # the live ingest counts these; here the file is the source
        pipe.handle_frame(frame)

    src = ReplaySource(path, on_frame, pipe.handle_series, pipe.denoise_q, realtime, limit)
    t0 = time.perf_counter()
    src.run()
    pipe.stop(timeout=max(settings.stop_timeout_s, 600.0))
    return pipe, time.perf_counter() - t0, src.n_sent
