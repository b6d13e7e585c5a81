"""The rule for invalid pixels, applied where a frame enters the pipeline (never in the batch stage).

Why: a float frame with a few NaN / Inf pixels (a dead or saturated pixel flagged by a bridge, a
division by a zero flat-field) came out of the denoiser 62-100 % NaN -- every convolution spreads
them over the network's field of view -- with no flag and no metric. Integer frames have their own
flag: a pixel at the dtype's largest value (2^bits - 1), which DECTRIS detectors write for defective
and module-gap pixels and any counter writes when it saturates. One such uint16 pixel (65535 counts in
a 0.45 counts/px frame) lifted the denoised mean of a 256^2 frame from 0.45 to 1.7, over a ~60 px
radius; a uint32 one to 1e5. Neither is a count the engine can use.

Hot pixels: a pixel that counts far more than the dose allows (a hot or stuck pixel, a cosmic or a
bridge's arithmetic) is no count either. One pixel at 100-65534 counts in a 0.45 counts/px frame
changed the denoised frame by > 5 % of vacuum out to 38-474 px (2-28 A) and added a column the
likelihood map scored as trusted in vacuum (LLR +15 to +318,638); at 3-50 counts the effect was nil.
So a pixel is *hot* when its count k is impossible under Poisson statistics at the configured dose:
P(X >= k | lam) < ``HOT_P`` (1e-12: about one false flag in 10^5 frames of 10^7 pixels) with
lam = max(``HOT_DOSE_FACTOR`` (10) x the configured vacuum counts per detector pixel, ``HOT_MIN_RATE``
(2)): 10x covers a dose up to 2x the configured one on specimen contrast up to 5x vacuum (phase
contrast stays well below), and the floor keeps a very low configured dose from flagging ordinary
counts (never below 19). At 0.45 counts/px the threshold is 27 counts (``hot_threshold``; 38 at 0.9,
140 at 7.2); a pixel at 2x the dose on 2x contrast (lam 1.8) reaches it with P 1e-22.

Guard against a wrong configured dose: a frame whose *own* dose -- the mean of its pixels below the
threshold, which a hot row, column or cluster does not move -- is more than ``HOT_MAX_DOSE`` (5x) the
configured one gets no hot-pixel rule at all: nothing is replaced, the frame is counted
(``sbd_frames_too_bright_total``, ``meta.bright_pixels`` = its pixels at the threshold) and warned about
("state the dose"). A wrong configured dose therefore never replaces real counts: at 5x and below no
count reaches the threshold (flat or on specimen contrast up to 2.4x: P < 1e-9 per pixel), above it the
frame is left alone whatever its contrast. A frame at the configured dose keeps its hot pixels replaced
however many there are and however they lie (a hot column of a 256^2 frame is 0.39 % of its pixels; an
earlier rule, "more than 0.1 % of the frame is a dose", took it for one, audit 24). Frames with negative
pixels (dark-subtracted or gain-corrected: not counts) get no hot-pixel rule, as before. The replacement
is the frame's mean, as for the other rules: at 0.45 counts/px both it and a 3x3 local median of the
neighbours are 0 counts (the mean rounds to 0), and on the auditor's scene (vacuum, support, particle)
both gave an effect radius of 0 px (nothing changed by > 1 % of vacuum).

The raw frame is still recorded exactly as received (pixels are data, and the recording must show
what the detector sent); the copy handed to the denoiser has each such pixel replaced by the mean of
the frame's other pixels (0 when there are none), is counted (``sbd_frames_nonfinite_total`` /
``sbd_pixels_nonfinite_total``; ``sbd_frames_saturated_total`` / ``sbd_pixels_saturated_total``;
``sbd_frames_hot_total`` / ``sbd_pixels_hot_total``), and its outputs carry ``meta.nonfinite_pixels``,
``meta.saturated_pixels`` or ``meta.hot_pixels = N`` so a subscriber knows those pixels were
invented. A frame without them passes untouched at the cost of one reduction (max; float frames: max
and min, which also find NaN / Inf); only a frame whose maximum reaches a threshold is masked (a
3838 x 3710 uint16 frame: ~1 ms untouched, 12-16 ms with a hot or a dtype-maximum pixel;
``benchmarks/bench_edge.py``).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sbd_stream.frames import Frame
from sbd_stream.metrics import Metrics

__all__ = [
    "BRIGHT_KEY", "HOT_KEY", "NONFINITE_KEY", "SATURATED_KEY", "Edge", "EdgeTally", "HotThreshold",
    "clean_pixels", "hot_threshold", "invalid_pixels", "negative_pixels", "replace_invalid", "replaced",
    "report_values",
]  # fmt: skip

log = logging.getLogger(__name__)

NONFINITE_KEY = "nonfinite_pixels"
"""The ``meta`` key of outputs whose raw frame had non-finite pixels (their count)."""
SATURATED_KEY = "saturated_pixels"
"""The ``meta`` key of outputs whose raw (unsigned integer) frame had pixels at the dtype's maximum."""
HOT_KEY = "hot_pixels"
"""The ``meta`` key of outputs whose raw frame had hot pixels (counts impossible at the configured dose)."""
BRIGHT_KEY = "bright_pixels"
"""The ``meta`` key of outputs whose raw frame had too many pixels at the hot threshold to be hot pixels
(the dose is far above the configured one): how many, all left as they were."""
REPLACED_KEYS = (NONFINITE_KEY, SATURATED_KEY, HOT_KEY)

HOT_P = 1e-12
"""A count whose Poisson tail probability at the bounding rate is below this is impossible: hot."""
HOT_DOSE_FACTOR = 10.0
"""The bounding rate, per configured vacuum count per detector pixel (2x dose x 5x specimen contrast)."""
HOT_MIN_RATE = 2.0
"""The bounding rate's floor (threshold 19 counts): a very low configured dose flags no ordinary count."""
HOT_MAX_DOSE = 5.0
"""A frame whose own dose (mean below the threshold) is over this many times the configured one: a wrong
configured dose, not hot pixels; no hot-pixel rule for it."""
HOT_MAX_FRACTION = 0.01
"""A frame with more than this fraction of its pixels at the threshold while the rest count under
1 / ``HOT_MAX_DOSE`` of the configured dose is not counts at that dose either: camera units or a gain
(30 ADU per electron: every pixel hit reaches the 27-count threshold, the others are 0, so "the mean of
the others" was 0, every hit was replaced by it, and the frame came out blank, exit 0; audit h30). A hot
column of a 256^2 frame at the configured dose is 0.39 %: still replaced."""


class HotThreshold(int):
    """The hot-pixel threshold (an int, compared with counts) that remembers the dose it was derived from,
    so ``invalid_pixels`` can tell a wrong configured dose from hot pixels with callers passing one value."""

    dose: float

    def __new__(cls, value: int, dose: float) -> HotThreshold:
        obj = super().__new__(cls, value)
        obj.dose = dose
        return obj


_KIND = {NONFINITE_KEY: "NaN / Inf", SATURATED_KEY: "at the dtype maximum (defective, gap, saturated)"}


@functools.lru_cache(maxsize=32)
def hot_threshold(counts_per_px: float) -> HotThreshold:
    """The smallest count a pixel cannot reach at ``counts_per_px`` configured (module docstring)."""
    from scipy.special import pdtrc  # P(X > k | lam); imported when a service or job first needs it

    lam = max(HOT_DOSE_FACTOR * counts_per_px, HOT_MIN_RATE)
    lo, hi = math.floor(lam), math.ceil(lam + 20 * math.sqrt(lam) + 40)  # tail(lo) ~ 0.5, tail(hi) < P
    while hi - lo > 1:  # P(X >= k) = pdtrc(k - 1, lam) falls with k: the first k below HOT_P
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if pdtrc(mid - 1, lam) >= HOT_P else (lo, mid)
    return HotThreshold(hi, counts_per_px)


def invalid_pixels(data: np.ndarray, hot: float | None = None) -> tuple[dict[str, np.ndarray], int]:
    """({meta key: mask} of the pixels the denoiser must not see, pixels at ``hot`` or above left alone).

    ``hot``: the hot-pixel threshold (``hot_threshold``; None: no hot-pixel rule). The second value is
    non-zero only when the frame's own dose is over ``HOT_MAX_DOSE`` x the one ``hot`` was derived from
    (a wrong configured dose): then no pixel is masked as hot. A plain number has no dose: no such guard.
    """
    return _scan(data, hot)[:2]


def _scan(
    data: np.ndarray, hot: float | None
) -> tuple[dict[str, np.ndarray], int, np.ndarray | None, float | None]:
    """``invalid_pixels`` and, where hot pixels were looked for in counts, what ``clean_pixels`` needs
    again: the flat indices of every pixel masked or at the threshold, and the sum of all pixels.

    Why both: a frame with one permanently hot pixel -- a real detector's usual state -- went through
    the comparison, two index scans and two sums of the whole frame (~29 ms for a 3838 x 3710 uint16
    frame, more than a 40 Hz frame's 25 ms); one of each is 12-14 ms (``benchmarks/bench_edge.py``).
    """
    masks: dict[str, np.ndarray] = {}
    if not data.size:
        return masks, 0, None, None
    kind, mn = data.dtype.kind, None
    mx = data.max()
    if kind == "f":
        mn = data.min()  # NaN reaches both, +Inf the maximum, -Inf the minimum
        if not (np.isfinite(mx) and np.isfinite(mn)):
            masks[NONFINITE_KEY] = bad = ~np.isfinite(data)
            finite = data[~bad]
            mx, mn = (finite.max(), finite.min()) if finite.size else (0, 0)
    elif kind == "u":
        mn, top = 0, np.iinfo(data.dtype).max
        if mx == top:
            masks[SATURATED_KEY] = data == top
    if hot is None or mx < hot:
        return masks, 0, None, None
    if (mn if mn is not None else data.min()) < 0:  # not counts (dark-subtracted): no Poisson rule
        return masks, 0, None, None
    limit = int(hot) if isinstance(hot, int) else float(hot)  # a plain number: numpy compares an int
    with np.errstate(invalid="ignore"):  # subclass (``HotThreshold``) by a 4x slower path (6.6 vs 1.5 ms)
        over = data >= limit
    flagged = next(iter(masks.values()), None)  # NaN / Inf or the dtype maximum: one kind per dtype
    drop = over
    if flagged is not None and not (kind == "u" and limit <= np.iinfo(data.dtype).max):
        drop = over | flagged  # NaN is not >= anything; the dtype maximum reaches any threshold below it
    idx = np.flatnonzero(drop)  # few pixels: a hot one, a column, a detector's gaps
    total = None if kind == "f" else _sum(data)  # floats: the mean of the others directly (``_own_dose``)
    n = idx.size - (int(np.count_nonzero(flagged)) if flagged is not None else 0)  # the hot ones
    dose = getattr(hot, "dose", None)
    if n and dose is not None:
        own = _own_dose(data, drop, idx, total)
        if own > HOT_MAX_DOSE * dose or (n > HOT_MAX_FRACTION * data.size and own * HOT_MAX_DOSE < dose):
            return masks, n, None, None  # a wrong dose, or not counts: left as they are, "too bright"
    if n:
        masks[HOT_KEY] = over if flagged is None else over & ~flagged  # +Inf / the maximum: flagged already
    return masks, 0, idx, total


def _sum(data: np.ndarray) -> float:
    """The sum of all pixels, exact for counts (integers add in 64 bits: ~1.5x faster than float64)."""
    kind = data.dtype.kind
    acc = np.uint64 if kind in "ub" else np.int64 if kind == "i" else np.float64
    return float(data.sum(dtype=acc))


def _own_dose(data: np.ndarray, drop: np.ndarray, idx: np.ndarray, total: float | None) -> float:
    """The frame's mean count without its pixels at the threshold or flagged already (``drop``, at
    ``idx``): its dose, which hot pixels do not lift (a 4000-count column of a 512^2 frame adds 7.8
    counts/px to the plain mean). ``total``: the sum of all pixels, exact for integers; None for floats,
    whose sum a few huge finite values swamp (1e20 in a 0.45 counts/px frame: "total - outliers" gave
    0, audit 25 review) and NaN spoils."""
    left = data.size - idx.size
    if not left:
        return math.inf
    if total is None:  # floats: the slow way
        return float(data[~drop].mean(dtype=np.float64))
    return (total - _sum(data.ravel()[idx])) / left


def clean_pixels(data: np.ndarray, hot: float | None = None) -> tuple[np.ndarray, dict[str, int]]:
    """(``data`` or a read-only copy with its unusable pixels replaced, {meta key: how many}).

    The array-level rule behind ``replace_invalid``: Python callers without a ``Frame``
    (``service/frames.py``) get exactly what the service edge and ``sbd-stream denoise`` do.
    """
    masks, bright, idx, total = _scan(data, hot)
    meta = {key: int(np.count_nonzero(m)) for key, m in masks.items()}
    if bright:
        meta[BRIGHT_KEY] = bright
    if not masks:
        return data, meta
    bad = None
    if idx is None:  # NaN / Inf or the dtype maximum only (no hot-pixel scan): a first look at them
        bad = functools.reduce(np.logical_or, masks.values())
        idx = np.flatnonzero(bad)
    left = data.size - idx.size
    if not left:
        fill = 0.0
    elif data.dtype.kind == "f":  # the mean of the others itself: huge finite values swamp a sum
        if bad is None:
            bad = functools.reduce(np.logical_or, masks.values())
        fill = float(data[~bad].mean(dtype=np.float64))
    else:  # the mean of the others without copying them (~10x faster)
        fill = ((total if total is not None else _sum(data)) - _sum(data.ravel()[idx])) / left
    # an integer frame keeps its dtype (the queue, the header and the batch stage expect it): its fill
    # is the mean rounded, at 0.45 counts/px the most common count, 0
    fill_value = np.asarray(fill if data.dtype.kind == "f" else round(fill), dtype=data.dtype)
    clean = np.array(data, order="C")  # a copy
    clean.ravel()[idx] = fill_value
    clean.flags.writeable = False
    return clean, meta


def replace_invalid(
    frame: Frame, metrics: Metrics | None = None, counts_per_px: float | None = None
) -> Frame:
    """``frame`` itself when all its pixels are usable; else a flagged copy with them replaced.

    ``counts_per_px``: the configured vacuum counts per detector pixel, for the hot-pixel rule (None:
    NaN / Inf and the dtype maximum only).
    """
    return _replace(frame, metrics, counts_per_px)[0]


def _replace(
    frame: Frame, metrics: Metrics | None, counts_per_px: float | None
) -> tuple[Frame, dict[str, int]]:
    """``replace_invalid`` and what it found ({meta key: pixels})."""
    hot = None if counts_per_px is None else hot_threshold(counts_per_px)
    clean, meta = clean_pixels(frame.data, hot)
    if not meta:
        return frame, meta
    if metrics is not None:
        for key, (frames, pixels) in {
            NONFINITE_KEY: (metrics.frames_nonfinite, metrics.pixels_nonfinite),
            SATURATED_KEY: (metrics.frames_saturated, metrics.pixels_saturated),
            HOT_KEY: (metrics.frames_hot, metrics.pixels_hot),
            BRIGHT_KEY: (metrics.frames_too_bright, None),
        }.items():
            if key in meta:
                frames.inc()
                if pixels is not None:
                    pixels.inc(meta[key])
    header = dataclasses.replace(frame.header, meta={**frame.header.meta, **meta})
    chunk = frame.chunk if clean is frame.data else None  # a too-bright frame keeps its pixels
    return dataclasses.replace(frame, header=header, data=clean, chunk=chunk), meta


replace_nonfinite = replace_invalid  # the earlier name (non-finite pixels were the first rule)


def replaced(frame: Frame) -> int:
    """How many of ``frame``'s pixels ``replace_invalid`` replaced (0 for an untouched frame)."""
    meta = frame.header.meta
    return sum(int(meta.get(k, 0)) for k in REPLACED_KEYS)


class Edge:
    """The service's edge (``Intake``): ``replace_invalid`` at the configured dose, counted in
    ``metrics``, and one warning per acquisition for hot pixels and for too-bright frames (a
    detector's hot pixel is in every frame: one line per frame would flood the log)."""

    def __init__(self, metrics: Metrics | None = None, counts_per_px: float | None = None) -> None:
        self.metrics, self.counts_per_px = metrics, counts_per_px
        self._warned: dict[tuple[str, str], None] = {}  # (kind, acq), oldest first, bounded

    def __call__(self, frame: Frame) -> Frame:
        out, found = _replace(frame, self.metrics, self.counts_per_px)
        h = out.header
        for key in (HOT_KEY, BRIGHT_KEY):
            if key in found and (key, h.acq) not in self._warned:
                self._warned[(key, h.acq)] = None
                while len(self._warned) > 256:
                    del self._warned[next(iter(self._warned))]
                log.warning("acquisition %s, frame %s: %s (once per acquisition)", h.acq, h.seq,
                            _said(key, found[key], self.counts_per_px, live=True))  # fmt: skip
        return out


def _why(counts_per_px: float | None) -> str:
    """The hot-pixel threshold and why it is one, in words."""
    assert counts_per_px is not None  # a hot / too-bright pixel is only found with a dose
    return (
        f">= {hot_threshold(counts_per_px)} counts, impossible under Poisson statistics at the configured "
        f"{counts_per_px:.3g} counts/px"
    )


def _said(key: str, n: int, counts_per_px: float | None, live: bool = False) -> str:
    """What the service's edge did about ``n`` hot / too-bright pixels of one frame, in words."""
    if key == HOT_KEY:
        where = "; counted in sbd_pixels_hot_total, outputs flagged meta.hot_pixels" if live else ""
        what = f"{n} hot pixel{'s' if n != 1 else ''} ({_why(counts_per_px)})"
        return f"{what} replaced by the frame's mean before denoising{where}"
    return f"{n} pixels {_bright(counts_per_px, 'counted in sbd_frames_too_bright_total; ' if live else '')}"


def _bright(counts_per_px: float | None, where: str = "") -> str:
    return (
        f"at {_why(counts_per_px)}, in a frame whose own mean count is over {HOT_MAX_DOSE:g}x the configured "
        f"dose, or with over {HOT_MAX_FRACTION:.0%} of its pixels there and the rest under "
        f"1/{HOT_MAX_DOSE:g} of it: not hot pixels but a dose far from the configured one, or not counts "
        f"(camera units, a gain); left as they are ({where}state the dose: --counts-per-px / --dose; or "
        "divide by the gain)"
    )


@dataclasses.dataclass
class EdgeTally:
    """What the edge did over one ``denoise`` job or API call, for its one warning per kind."""

    counts_per_px: float | None = None
    pixels: dict[str, int] = dataclasses.field(default_factory=dict)  # meta key -> pixels replaced
    bright: list[int] = dataclasses.field(default_factory=list)  # frames too bright for the hot rule

    def add(self, index: int, meta: Mapping[str, Any]) -> None:
        for key in REPLACED_KEYS:
            if meta.get(key):
                self.pixels[key] = self.pixels.get(key, 0) + int(meta[key])
        if meta.get(BRIGHT_KEY):
            self.bright.append(index)

    def merge(self, other: EdgeTally) -> None:
        for key, n in other.pixels.items():
            self.pixels[key] = self.pixels.get(key, 0) + n
        self.bright += other.bright


def negative_pixels(frames: np.ndarray) -> int:
    """Pixels below zero: not counts (a dark-subtracted or gain-corrected frame), passed on as they are.

    The engines were trained on Poisson counts; offline ``denoise`` reports how many such pixels it
    saw so a user knows the input was not what the engine expects. Unsigned frames cost nothing.
    """
    if frames.dtype.kind == "u":
        return 0
    with np.errstate(invalid="ignore"):
        n = int(np.count_nonzero(frames < 0))
    if n and frames.dtype.kind == "f":  # -Inf is counted (and replaced) as non-finite, not as a count < 0
        n -= int(np.count_nonzero(np.isneginf(frames)))  # (it was both, with the "dark-subtracted?" line)
    return n


def report_values(
    per_frame: np.ndarray, negative: int, output: Path | str, tally: EdgeTally | None = None
) -> None:
    """One warning each for replaced, too-bright and negative input pixels: what was done and where to
    look (``output``: a file, whose ``/replaced_pixels`` has the counts, or a text naming where they
    are); ``tally``: which kinds were replaced and which frames were too bright (``EdgeTally``)."""
    tally = tally or EdgeTally()
    if per_frame.any():
        first = np.flatnonzero(per_frame)[:5].tolist()
        kinds = [
            f"{n} hot ({_why(tally.counts_per_px)})" if k == HOT_KEY else f"{n} {_KIND[k]}"
            for k, n in tally.pixels.items()
        ]
        log.warning(
            "%d pixels in %d frames (first: %s) were replaced by their frame's mean before denoising: "
            "%s; per frame in %s",
            int(per_frame.sum()), int(np.count_nonzero(per_frame)), first,
            "; ".join(kinds) or "NaN / Inf, the dtype maximum or hot",
            f"{output}:/replaced_pixels" if isinstance(output, Path) else output,
        )  # fmt: skip
    if tally.bright:
        log.warning(
            "%d frames (first: %s) had pixels %s", len(tally.bright), tally.bright[:5],
            _bright(tally.counts_per_px),
        )  # fmt: skip
    if negative:
        log.warning(
            "%d input pixels are negative: not detector counts (dark-subtracted or gain-corrected?); "
            "the engine was trained on Poisson counts and passes them through",
            negative,
        )
