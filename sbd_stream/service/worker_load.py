"""Per-worker load from a service's ``/metrics`` text (``info --service``): pure readings of a scrape.

Apart from ``service/workers.py`` (which re-exports them) because they read the exported text, not the
running pool: ``info --service`` needs no pool, and the pool's module stays within its size.
"""

from __future__ import annotations

from typing import Any

__all__ = ["worker_load", "worker_samples"]


def worker_samples(metrics_text: str) -> dict[str, dict[str, Any]]:
    """Per-worker counters and labels from a service's ``/metrics`` text (pure: ``info --service``)."""
    from prometheus_client.parser import text_string_to_metric_families

    names = {
        "sbd_worker_frames": "frames",
        "sbd_worker_batches": "batches",
        "sbd_worker_busy_seconds": "busy_s",
        "sbd_worker_errors": "errors",
    }
    out: dict[str, dict[str, Any]] = {}
    for fam in text_string_to_metric_families(metrics_text):
        for s in fam.samples:
            w = s.labels.get("worker")
            if w is None:
                continue
            row = out.setdefault(w, {"worker": int(w)})
            if s.name == "sbd_worker_info":
                threads = s.labels.get("threads", "")  # a number, as serve's summary has it, or "default"
                row["threads"] = int(threads) if threads.isdigit() else threads
                row["device"] = s.labels.get("device")
                row["engine"] = s.labels.get("engine")
            elif s.name.endswith("_total") and s.name.removesuffix("_total") in names:
                row[names[s.name.removesuffix("_total")]] = s.value
    return out


def worker_load(before: str, after: str, seconds: float) -> list[dict[str, Any]]:
    """Each worker's load (busy fraction) and frames/s between two scrapes ``seconds`` apart."""
    a, b = worker_samples(before), worker_samples(after)
    rows = []
    for w in sorted(b, key=int):
        now, then = b[w], a.get(w, {})
        d = {k: now.get(k, 0.0) - then.get(k, 0.0) for k in ("frames", "busy_s", "errors")}
        rows.append(
            {
                **{k: now.get(k) for k in ("worker", "device", "threads", "engine")},
                "frames_total": now.get("frames", 0.0),
                "errors_total": now.get("errors", 0.0),
                "load": d["busy_s"] / seconds if seconds > 0 else 0.0,
                "frames_per_s": d["frames"] / seconds if seconds > 0 else 0.0,
            }
        )
    return rows
