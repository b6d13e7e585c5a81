"""Physical facts about a shown frame, read from its metadata: pixel size, dose, acquisition time, lane.

Why a module of its own: a scale bar that is wrong by the binning factor is worse than none. Denoised
frames may be published at the detector pixel or at the engine's working pixel (4x larger), so the
pixel size is read per frame, in this order, and the page is told where it came from:

1. the frame's own ``meta.pixel_size_A`` (a service publishing at the working pixel says so there);
2. for outputs without it: the raw frame's pixel scaled by the shape ratio (raw 1024 px, denoised
   256 px: 4x the raw pixel), because the field of view is the same;
3. the acquisition's ``series_start`` ``meta.pixel_size_A`` (the emulator and recordings state it);
4. the detector settings handed to the viewer (``detector.pixel_size_A``), if any;

and otherwise ``None``: the page then draws the scale bar in pixels and says the pixel size is unknown.
"""

from __future__ import annotations

import math
from typing import Any

from sbd_stream.config import DetectorSettings
from sbd_stream.protocol import FrameHeader


def _num(d: Any, key: str) -> float | None:
    v = d.get(key) if isinstance(d, dict) else None
    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0:
        return float(v)
    return None


def detector_pixel(
    raw: FrameHeader | None, series_meta: dict[str, Any], detector: DetectorSettings | None
) -> tuple[float | None, str]:
    """The detector's pixel at the specimen (A) and where that number came from."""
    if raw is not None and (p := _num(raw.meta, "pixel_size_A")) is not None:
        return p, "raw frame meta"
    if (p := _num(series_meta, "pixel_size_A")) is not None:
        return p, "series_start meta"
    if detector is not None:
        return float(detector.pixel_size_A), "detector settings"
    return None, "unknown"


def frame_pixel(
    h: FrameHeader, raw: FrameHeader | None, series_meta: dict[str, Any], detector: DetectorSettings | None
) -> tuple[float | None, str]:
    """Pixel size (A) of the frame with header ``h``, and its source (see the module docstring)."""
    if (p := _num(h.meta, "pixel_size_A")) is not None:
        return p, "frame meta"
    det, src = detector_pixel(raw, series_meta, detector)
    if det is None:
        return None, src
    ref = raw.shape if raw is not None and raw.acq == h.acq else _shape(series_meta)
    if ref is None or tuple(ref) == tuple(h.shape):
        return det, src
    ratio = ref[1] / h.shape[1]
    k = round(ratio)
    factor = float(k) if k >= 1 and abs(ratio - k) < 0.05 * k else ratio  # binning leaves a remainder strip
    return det * factor, f"{src} x {factor:g} (shape {ref[1]} -> {h.shape[1]} px)"


def _shape(series_meta: dict[str, Any]) -> tuple[int, int] | None:
    s = series_meta.get("shape") if isinstance(series_meta, dict) else None
    if isinstance(s, list | tuple) and len(s) == 2 and all(isinstance(x, int) and x > 0 for x in s):
        return int(s[0]), int(s[1])
    return None


def dose(
    raw: FrameHeader | None,
    series_meta: dict[str, Any],
    detector: DetectorSettings | None,
    pixel_A: float | None,
) -> dict[str, Any]:
    """Nominal dose per frame as stated (e/A^2 and counts per detector pixel), one derived from the other.

    A bare ``meta.dose`` is not read: senders disagree on its unit (the emulator's is counts/px).
    """
    for where, m in (
        ("raw frame meta", raw.meta if raw is not None else {}),
        ("series_start meta", series_meta),
    ):
        e, c = _num(m, "dose_e_per_A2"), _num(m, "counts_per_px")
        if e is not None or c is not None:
            return _both(e, c, pixel_A, where)
    if detector is not None and pixel_A is not None:
        if detector.counts_per_px is not None or detector.dose_e_per_A2 is not None:
            return _both(None, detector.vacuum_counts, detector.pixel_size_A, "detector settings")
        return _both(detector.dose_per_area, None, pixel_A, "detector settings (default dose)")
    return {"e_per_A2": None, "counts_per_px": None, "source": "unknown"}


def _both(e: float | None, c: float | None, pixel_A: float | None, source: str) -> dict[str, Any]:
    if e is None and c is not None and pixel_A:
        e = c / pixel_A**2
    if c is None and e is not None and pixel_A:
        c = e * pixel_A**2
    return {"e_per_A2": e, "counts_per_px": c, "source": source}


def frame_time(h: FrameHeader, series: dict[str, Any]) -> dict[str, Any]:
    """Acquisition time of the frame: its ``ts`` (Unix s), seconds since series_start, exposure.

    ``series``: the ``series_start`` (acq, ts) the frame is timed from; the viewer passes the latest of
    its acquisition not later than the frame (``FrameStore.series_t0``). A start after the frame (a
    re-armed series, while the old one's last frame is still shown; a DECTRIS ``ts`` counted from the
    series' start, not a date) gives None, never a negative time. ``exposure_s`` is the header's, as
    the wire format defines it: 0 when the sender did not state one.
    """
    t0 = series.get("ts") if series.get("acq") == h.acq else None
    known = isinstance(t0, float | int) and not isinstance(t0, bool) and t0 <= h.ts
    return {
        "ts": h.ts,
        "since_start_s": (h.ts - t0) if known and t0 is not None else None,
        "exposure_s": h.exposure_s,
    }


STALE_MIN_S = 2.0
"""A frame is not called stale before it is this old (s): a pause of a few frames is not a stop."""
STALE_FRAMES = 5
"""... nor before this many of the stream's frame periods have passed without a newer one."""


def freshness(age_s: float, exposure_s: float, interval_s: float | None) -> dict[str, Any]:
    """Whether the newest frame of a kind is still current: ``stale`` once no newer one came for
    ``stale_after_s`` = the larger of ``STALE_MIN_S`` and ``STALE_FRAMES`` frame periods (the frame's
    ``exposure_s``, or the receipt interval of the last frames, whichever is longer).

    Why: when the detector stops, the beam is blanked at the gun or the service dies, the page kept the
    last frame with its (small) latency and nothing said it was no longer the newest frame now; a
    microscopist steering by it took a frame tens of seconds old for the specimen's present state.
    """
    periods = [x for x in (exposure_s, interval_s) if x is not None and math.isfinite(x) and x > 0]
    after = max(STALE_MIN_S, STALE_FRAMES * max(periods, default=0.0))
    return {"stale": bool(age_s > after), "stale_after_s": round(after, 3)}


def is_blank(h: FrameHeader) -> bool:
    """The service's ``meta.blank``: a frame without beam, published as zeros without columns."""
    return isinstance(h.meta, dict) and h.meta.get("blank") is True
