"""Service metrics for the live viewer page, read from the service's own Prometheus endpoint.

Why scrape rather than share the in-process registry: a stand-alone viewer of a remote service has
only the HTTP endpoint, and the numbers on the page are then exactly those Grafana shows.

Parsing (``parse_scrape``) and the page's numbers (``summarize``) are pure functions of the scrape
text and the previous scrape, so they are tested without a service; ``MetricsPoller`` only fetches.
The numbers are grouped by the service's two lanes (docs/service.md "Two lanes"): the **live** lane
(newest frame, published: what the page shows) and the **complete** lane (frames the live lane
skipped, denoised later into the recording).
"""

from __future__ import annotations

import collections
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from sbd_stream.metrics_summary import histogram_quantile

__all__ = ["LANES", "MetricsPoller", "Scrape", "histogram_quantile", "parse_scrape", "summarize"]

E2E = "sbd_end_to_end_latency_seconds"  # receipt -> handed to ZeroMQ: the live lane, published
LANE_LATENCY = "sbd_lane_latency_seconds"  # receipt -> out of the engine, per lane
LANES = ("live", "complete")

Buckets = list[tuple[float, float]]


@dataclass
class Scrape:
    """One scrape: sample values summed over labels (queue depths kept apart), and the cumulative
    buckets of the latency histograms the page reads (``e2e``, ``live``, ``complete``)."""

    t: float
    values: dict[str, float] = field(default_factory=dict)
    buckets: dict[str, Buckets] = field(default_factory=dict)

    def get(self, name: str) -> float:
        return self.values.get(name, 0.0)


def parse_scrape(text: str, t: float = 0.0) -> Scrape:
    """Prometheus text format -> ``Scrape`` (taken at monotonic time ``t``)."""
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[str, float] = collections.defaultdict(float)
    buckets: dict[str, Buckets] = collections.defaultdict(list)
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == E2E + "_bucket":
                buckets["e2e"].append((float(s.labels["le"]), float(s.value)))
            elif s.name == LANE_LATENCY + "_bucket":
                buckets[s.labels.get("lane", "")].append((float(s.labels["le"]), float(s.value)))
            elif s.name == "sbd_queue_depth":
                values[f"queue_{s.labels.get('queue', '')}"] = float(s.value)
            else:
                values[s.name] += float(s.value)  # sums over labels (e.g. published by topic)
    return Scrape(t, dict(values), dict(buckets))


def _window(cur: Buckets, prev: Buckets | None) -> Buckets:
    """The buckets of the last interval when it saw any event, else the whole run's."""
    if prev is None:
        return cur
    before = dict(prev)
    delta = [(le, c - before.get(le, 0.0)) for le, c in cur]
    return delta if delta and max(c for _, c in delta) > 0 else cur


def _quantiles(cur: Buckets, prev: Buckets | None) -> tuple[float | None, float | None]:
    w = _window(cur, prev)
    return histogram_quantile(0.5, w), histogram_quantile(0.99, w)


def _complete_state(skipped: float, backlog: float, completed: float, left: float) -> str:
    """``nothing_skipped``, ``catching_up`` (frames wait in the backlog) or ``up_to_date``."""
    if backlog > 0:
        return "catching_up"
    return "nothing_skipped" if skipped <= 0 and completed <= 0 and left <= 0 else "up_to_date"


def summarize(cur: Scrape, prev: Scrape | None = None) -> dict[str, Any]:
    """The page's numbers from this scrape (and the previous one, for rates and recent latency).

    Flat keys (totals, rates, ``latency_p50_s`` / ``latency_p99_s`` of the end-to-end histogram:
    receipt -> published, i.e. the live lane) as before, plus ``lanes``: per lane its frames, frames/s
    and engine latency (``sbd_lane_latency_seconds``), and the complete lane's backlog, leftovers for
    offline and state. A service without lane metrics reads as a live lane with every frame.
    """
    dt = None if prev is None else max(cur.t - prev.t, 1e-6)

    def rate(name: str, value: float | None = None) -> float | None:
        if prev is None or dt is None:
            return None
        now = cur.get(name) if value is None else value
        return (now - prev.get(name)) / dt

    received, denoised = cur.get("sbd_frames_received_total"), cur.get("sbd_frames_denoised_total")
    skipped, completed = cur.get("sbd_frames_skipped_total"), cur.get("sbd_frames_completed_total")
    backlog, left = cur.get("sbd_complete_backlog_frames"), cur.get("sbd_frames_left_for_offline_total")
    out: dict[str, Any] = {
        "received_total": received,
        "denoised_total": denoised,
        "skipped_total": skipped,
        "malformed_total": cur.get("sbd_frames_malformed_total"),
        "missing_total": cur.get("sbd_frames_missing_total"),
        "queue_denoise": cur.get("queue_denoise"),
    }
    if prev is not None:
        out["input_rate_hz"] = rate("sbd_frames_received_total")
        out["denoised_rate_hz"] = rate("sbd_frames_denoised_total")
    p = prev.buckets if prev is not None else {}
    out["latency_p50_s"], out["latency_p99_s"] = _quantiles(cur.buckets.get("e2e", []), p.get("e2e"))

    live_total = denoised - completed
    prev_live = (
        None
        if prev is None
        else prev.get("sbd_frames_denoised_total") - prev.get("sbd_frames_completed_total")
    )
    lanes: dict[str, dict[str, Any]] = {
        "live": {
            "frames_total": live_total,
            "rate_hz": None if prev_live is None or dt is None else (live_total - prev_live) / dt,
            "skipped_total": skipped,
        },
        "complete": {
            "frames_total": completed,
            "rate_hz": rate("sbd_frames_completed_total"),
            "backlog_frames": backlog,
            "left_for_offline_total": left,
            "state": _complete_state(skipped, backlog, completed, left),
        },
    }
    for lane in LANES:
        lo, hi = _quantiles(cur.buckets.get(lane, []), p.get(lane))
        lanes[lane]["engine_latency_p50_s"], lanes[lane]["engine_latency_p99_s"] = lo, hi
    out["lanes"] = lanes
    return out


class MetricsPoller:
    """Scrapes the service's /metrics once a second and keeps the page's numbers (``summary``)."""

    def __init__(self, url: str, interval_s: float = 1.0) -> None:
        self.url, self.interval = url, interval_s
        self.summary: dict[str, Any] = {}
        self.error: str | None = "not scraped yet"
        self._prev: Scrape | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sbd-viewer-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(3.0)

    def scrape(self) -> Scrape:
        with urllib.request.urlopen(self.url, timeout=0.8) as resp:
            text = resp.read().decode("utf-8")
        return parse_scrape(text, time.monotonic())

    def _update(self) -> None:
        cur = self.scrape()
        self.summary, self.error = summarize(cur, self._prev), None
        self._prev = cur

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._update()
            except Exception as exc:
                self.error = f"{type(exc).__name__}: {exc}"[:200]
            self._stop.wait(self.interval)
