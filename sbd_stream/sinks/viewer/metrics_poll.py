"""Service metrics for the live viewer page, read from the service's own Prometheus endpoint.

Why scrape rather than share the in-process registry: a stand-alone viewer of a remote service has
only the HTTP endpoint, and the numbers on the page are then exactly those Grafana shows.
"""

from __future__ import annotations

import collections
import threading
import time
import urllib.request
from typing import Any

from sbd_stream.metrics_summary import histogram_quantile

__all__ = ["MetricsPoller", "histogram_quantile"]


class MetricsPoller:
    """Scrapes the service's /metrics once a second and keeps rates over the last interval."""

    LATENCY = "sbd_end_to_end_latency_seconds"

    def __init__(self, url: str, interval_s: float = 1.0) -> None:
        self.url, self.interval = url, interval_s
        self.summary: dict[str, Any] = {}
        self.error: str | None = "not scraped yet"
        self._prev: tuple[float, dict[str, float], list[tuple[float, float]]] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sbd-viewer-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(3.0)

    def scrape(self) -> tuple[dict[str, float], list[tuple[float, float]]]:
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(self.url, timeout=0.8) as resp:
            text = resp.read().decode("utf-8")
        values: dict[str, float] = collections.defaultdict(float)
        buckets: list[tuple[float, float]] = []
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == self.LATENCY + "_bucket":
                    buckets.append((float(s.labels["le"]), float(s.value)))
                elif s.name == "sbd_queue_depth":
                    values[f"queue_{s.labels.get('queue', '')}"] = float(s.value)
                else:
                    values[s.name] += float(s.value)  # sums over labels (e.g. published by topic)
        return values, buckets

    def _update(self) -> None:
        now = time.monotonic()
        values, buckets = self.scrape()
        out: dict[str, Any] = {
            "received_total": values.get("sbd_frames_received_total", 0.0),
            "denoised_total": values.get("sbd_frames_denoised_total", 0.0),
            "skipped_total": values.get("sbd_frames_skipped_total", 0.0),
            "malformed_total": values.get("sbd_frames_malformed_total", 0.0),
            "missing_total": values.get("sbd_frames_missing_total", 0.0),
            "queue_denoise": values.get("queue_denoise", 0.0),
        }
        window = buckets
        if self._prev is not None:
            t0, v0, b0 = self._prev
            dt = max(now - t0, 1e-6)
            out["input_rate_hz"] = (out["received_total"] - v0.get("sbd_frames_received_total", 0.0)) / dt
            out["denoised_rate_hz"] = (out["denoised_total"] - v0.get("sbd_frames_denoised_total", 0.0)) / dt
            prev = dict(b0)
            delta = [(le, c - prev.get(le, 0.0)) for le, c in buckets]
            if delta and max(c for _, c in delta) > 0:
                window = delta  # latency over the last interval, not since start-up
        out["latency_p50_s"] = histogram_quantile(0.5, window)
        out["latency_p99_s"] = histogram_quantile(0.99, window)
        self._prev = (now, values, buckets)
        self.summary, self.error = out, None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._update()
            except Exception as exc:
                self.error = f"{type(exc).__name__}: {exc}"[:200]
            self._stop.wait(self.interval)
