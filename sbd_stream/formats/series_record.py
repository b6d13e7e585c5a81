"""A ``series_start`` as a recording keeps it: the flat ``series_meta`` view and the message's own fields.

Why both. ``series_meta`` (and NeXus ``series_metadata``) was the producer's ``meta`` with the announced
``exposure_s`` / ``n_frames`` / ``shape`` / ``dtype`` merged in, ``meta`` last: a ``meta`` key named like
an announcement (detector metadata carrying its own ``n_frames`` or ``shape``) silently replaced the
announced value, and ``replay`` could not tell announcements from ``meta`` to send the series_start as
it came (audit h28, items 2 and 5). Now:

* ``series_meta`` stays one flat object, for its readers (NeXus ``count_time``, the viewer, scripts):
  the announcements **win**, and a ``meta`` key that collides with a stated announcement is kept as
  ``meta.<key>`` (``meta.meta.<key>`` should that name be taken too), so nothing is lost;
* ``series_start`` holds the message apart, losslessly: ``ts``, the announcements it stated and its
  ``meta`` as sent. Written only where a series_start was recorded (not by ``Recorder`` API callers that
  give ``meta`` alone, nor by older versions): readers then split ``series_meta`` by name
  (``read_series``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sbd_stream.protocol import TOPIC_SERIES_START, SeriesHeader, decode, ts_ok

__all__ = ["ANNOUNCED", "RecordedSeries", "read_series", "series_attrs", "series_fields"]

ANNOUNCED = ("exposure_s", "n_frames", "shape", "dtype")
"""What a wire-v1 ``series_start`` may state at its top level besides ``ts`` and ``meta``."""


def series_fields(h: SeriesHeader) -> dict[str, Any]:
    """A series_start's own fields beside its ``meta``: ``ts`` and the announcements it stated."""
    out: dict[str, Any] = {"ts": h.ts}
    for key in ANNOUNCED:
        if (value := getattr(h, key)) is not None:
            out[key] = list(value) if key == "shape" else value
    return out


def flat_series_meta(meta: Mapping[str, Any], start: Mapping[str, Any] | None) -> dict[str, Any]:
    """``series_meta``: the announcements, then ``meta``; a colliding ``meta`` key as ``meta.<key>``."""
    out: dict[str, Any] = {k: v for k, v in (start or {}).items() if k in ANNOUNCED}
    clashes = [k for k in meta if k in out]
    out.update((k, v) for k, v in meta.items() if k not in out)
    for key in clashes:
        name = f"meta.{key}"
        while name in out:  # a producer's own ``meta.<key>``: lossless all the same
            name = f"meta.{name}"
        out[name] = meta[key]
    return out


def series_attrs(meta: Any, start: Mapping[str, Any] | None) -> dict[str, str]:
    """The part attributes a recorded series_start gives (JSON): ``series_meta``, and ``series_start``
    when the message's own fields are known (``start``: ``series_fields``)."""
    meta = meta if isinstance(meta, dict) else {}
    attrs = {"series_meta": json.dumps(flat_series_meta(meta, start), default=str)}
    if start is not None:
        attrs["series_start"] = json.dumps({**start, "meta": meta}, default=str)
    return attrs


@dataclass(frozen=True)
class RecordedSeries:
    """A part's series_start as recorded: what ``replay`` sends again."""

    ts: float | None = None  # the series_start's ts; None: not recorded (older part, or none was sent)
    announced: dict[str, Any] = field(default_factory=dict)  # valid wire-v1 announcements only
    meta: dict[str, Any] = field(default_factory=dict)  # the producer's meta


def _loads(text: Any) -> dict[str, Any]:
    try:
        out = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        return {}
    return out if isinstance(out, dict) else {}


def _valid(key: str, value: Any) -> bool:
    """Whether ``value`` is a valid announcement ``key`` for wire format v1 (the live ingest's rule)."""
    try:
        decode([TOPIC_SERIES_START, json.dumps({"v": 1, "acq": "a", "ts": 0.0, key: value}).encode(), b""])
    except (ValueError, TypeError, RecursionError):  # ProtocolError is a ValueError
        return False
    return True


def read_series(attrs: Mapping[str, Any]) -> RecordedSeries:
    """A part's recorded series_start, from its ``series_start`` attribute, else (older parts) from
    ``series_meta``, whose announcement names count as announcements when valid (the rest is ``meta``:
    in such a part a ``meta`` key of that name had already replaced the announcement)."""
    start = _loads(attrs.get("series_start"))
    if isinstance(start.get("meta"), dict):
        said = {k: v for k, v in start.items() if k in ANNOUNCED and _valid(k, v)}
        ts = start.get("ts")
        return RecordedSeries(float(ts) if ts_ok(ts) else None, said, dict(start["meta"]))
    flat = _loads(attrs.get("series_meta"))
    said = {k: v for k, v in flat.items() if k in ANNOUNCED and _valid(k, v)}
    return RecordedSeries(None, said, {k: v for k, v in flat.items() if k not in said})
