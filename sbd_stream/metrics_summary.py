"""What a run's metrics add up to: totals, the status line, the final summary, latency quantiles.

Why apart from ``metrics.py``: the registry (what is exported, under which names) is the service's
contract with dashboards; these are readings of it for people (``serve`` / ``replay`` / ``demo``
summaries, the viewer's tiles), and they change more often.
"""

from __future__ import annotations

import weakref
from typing import Any

from sbd_stream.metrics import Metrics

__all__ = ["histogram_quantile", "lane_latency", "lanes_summary", "status_line", "summary", "total"]


def total(m: Metrics, name: str) -> float:
    """Sum of a metric's samples over all label values."""
    return sum(s.value for metric in m.registry.collect() for s in metric.samples if s.name == name)


_LAST_STATUS: weakref.WeakKeyDictionary[Metrics, tuple[float, float]] = weakref.WeakKeyDictionary()


def status_line(m: Metrics, elapsed: float) -> str:
    """The one-line progress report ``serve`` prints every few seconds.

    The rate is over the interval since the previous line (the first: since the start), so it reads
    as the stream's rate now: an average over the whole uptime read 5.5/s on a 20 Hz stream that had
    started late, and kept falling after the input stopped.

    Each line also checks the open descriptors against the open-file limit (``open_files``): near it,
    inputs refuse connections silently, and the warning must come whether or not anything scrapes
    ``/metrics`` (where the same check runs too).
    """
    m.open_files.check()
    n = m.value("sbd_frames_received_total")
    t0, n0 = _LAST_STATUS.get(m, (0.0, 0.0))
    _LAST_STATUS[m] = (elapsed, n)
    rate = (n - n0) / max(elapsed - t0, 1e-9)
    return (
        f"{elapsed:7.1f}s  in {n:.0f} ({rate:.1f}/s)  "
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
    "sbd_frames_completed_total",
    "sbd_frames_left_for_offline_total",
    "sbd_frames_duplicate_total",
    "sbd_frames_missing_total",
    "sbd_sequence_restarts_total",
    "sbd_record_dropped_total",
    "sbd_denoise_overflow_total",
    "sbd_denoise_errors_total",
    "sbd_frames_failed_total",
)


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus-style quantile from cumulative (le, count) buckets, linear within a bucket.

    A rank in the ``+Inf`` bucket reads the highest finite bound, as Prometheus does: a lower bound,
    not the value (see ``lane_latency``)."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    prev_le, prev_c = 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_c) / max(c - prev_c, 1e-12))
        prev_le, prev_c = le, c
    return prev_le


def lane_latency(m: Metrics, lane: str, qs: tuple[float, ...] = (0.5, 0.9, 0.99)) -> dict[str, Any]:
    """Quantiles of one lane's latency over the whole run, from its histogram (bucket-resolved), and the
    exact mean (sum / count).

    A quantile beyond the highest finite bucket is ``None`` with ``above_s`` the bound it exceeds: it
    used to read as that bound (30 s when the complete lane's frames had waited ~170 s on average).
    """
    buckets: list[tuple[float, float]] = []
    total = count = 0.0
    for metric in m.registry.collect():
        for s in metric.samples:
            if s.labels.get("lane") != lane:
                continue
            if s.name == "sbd_lane_latency_seconds_bucket":
                buckets.append((float(s.labels["le"]), float(s.value)))
            elif s.name == "sbd_lane_latency_seconds_sum":
                total = float(s.value)
            elif s.name == "sbd_lane_latency_seconds_count":
                count = float(s.value)
    out: dict[str, Any] = {}
    finite = [le for le, _ in buckets if le != float("inf")]
    top = max(finite, default=0.0)
    below_top = dict(buckets).get(top, 0.0)
    for q in qs:
        key = f"p{round(q * 100)}_s"
        beyond = count > 0 and q * count > below_top
        out[key] = None if beyond else histogram_quantile(q, buckets)
        if beyond:
            out["above_s"] = top
    out["mean_s"] = total / count if count else None
    return out


def lanes_summary(m: Metrics) -> dict[str, dict[str, Any]]:
    """What each lane did: frames, latency quantiles; the complete lane's backlog and leftovers."""
    completed = m.value("sbd_frames_completed_total")
    return {
        "live": {
            "frames": m.value("sbd_frames_denoised_total") - completed,
            "latency": lane_latency(m, "live"),
        },
        "complete": {
            "frames": completed,
            "left_for_offline": m.value("sbd_frames_left_for_offline_total"),
            "backlog": m.value("sbd_complete_backlog_frames"),
            "latency": lane_latency(m, "complete"),
        },
    }


def summary(m: Metrics, elapsed: float) -> dict[str, Any]:
    """Final counters of a run (what ``serve`` / ``replay`` print and return)."""
    out: dict[str, Any] = {"seconds": elapsed}  # counts as integers: counters hold whole frames
    out.update({n.removeprefix("sbd_").removesuffix("_total"): int(total(m, n)) for n in SUMMARY_NAMES})
    out["malformed"] = int(total(m, "sbd_frames_malformed_total"))
    out["published"] = int(total(m, "sbd_frames_published_total"))
    out["recorded_raw"] = int(m.value("sbd_frames_recorded_total", {"kind": "raw"}))
    out["recorded_denoised"] = int(m.value("sbd_frames_recorded_total", {"kind": "denoised"}))
    out["lanes"] = lanes_summary(m)
    return out
