"""The image API's query string, checked: every value the page (or a script) may send, or a 400 reason.

Why a module of its own: a value that is silently bent into range (``side=-1`` drawn at 16 px, an
``overlay`` the renderer ignores, a negative frame number answered with the newest frame) makes a
script believe it got what it asked for. Each parameter is parsed here once, with a short reason when
it is out of range, and ``server.py`` turns the ``ValueError`` into HTTP 400.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sbd_stream.sinks.viewer.contrast import check_mode
from sbd_stream.sinks.viewer.images import ImageRequest
from sbd_stream.sinks.viewer.render import check_percentiles

FALLBACK_NEWEST = "newest"
"""``fallback=newest``: a ``seq`` no longer kept is answered with the newest frame (the page uses it)."""


PAGE_PERCENTILES = {False: ("1", "99.5"), True: ("0", "98")}
"""Defaults of ``lo`` / ``hi``: the page's own (*low % / high %* 1 / 99.5, *LLR range %* 98), so a
script that leaves them out gets the picture the page shows. ``hi`` was 99 for every kind, while
docs/viewer.md's path reads ``lo=1&hi=99.5`` and the page asks 98 for the LLR map."""


@dataclass(frozen=True)
class ImageQuery:
    request: ImageRequest
    seq: int | None  # None: the newest frame
    fallback_newest: bool  # a ``seq`` no longer kept: serve the newest instead of 404


def _one(q: dict[str, list[str]], name: str, default: str) -> str:
    values = q.get(name)
    if not values:
        return default
    if len(values) > 1:
        raise ValueError(f"{name} given {len(values)} times")
    return values[0]


def _number(q: dict[str, list[str]], name: str, default: str) -> float:
    text = _one(q, name, default)
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {text[:20]!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {text[:20]!r}")
    return value


def _whole(name: str, text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {text[:20]!r}") from None
    if value < least:
        raise ValueError(f"{name} must be >= {least}, got {value}")
    return value


def parse_image_query(kind: str, q: dict[str, list[str]]) -> ImageQuery:
    """``/image/{kind}.png`` query -> what to render; ValueError (HTTP 400) names the bad parameter.

    ``side`` is a positive whole number of pixels (the renderer then keeps it within 16 .. max_side);
    ``seq`` a frame number >= 0; ``overlay`` 0 or 1, and 1 only on ``llr.png``: the overlay is the LLR
    map with alpha, which the page draws over the denoised panel itself (docs/viewer.md).
    """
    lo_default, hi_default = PAGE_PERCENTILES[kind == "llr"]
    lo, hi = check_percentiles(_number(q, "lo", lo_default), _number(q, "hi", hi_default))
    region = None
    if "region" in q:
        text = _one(q, "region", "")
        try:
            parts = [int(float(x)) for x in text.split(",")]
        except (ValueError, OverflowError):
            raise ValueError("region is x0,y0,x1,y1 in the frame's pixels") from None
        if len(parts) != 4:
            raise ValueError("region is x0,y0,x1,y1 in the frame's pixels")
        region = (parts[0], parts[1], parts[2], parts[3])
    overlay = _one(q, "overlay", "0")
    if overlay not in ("0", "1"):
        raise ValueError(f"overlay must be 0 or 1, got {overlay[:20]!r}")
    if overlay == "1" and kind != "llr":
        raise ValueError("overlay=1 is for llr.png (the page draws that RGBA map over the denoised frame)")
    seq = _one(q, "seq", "")
    fallback = _one(q, "fallback", "")
    if fallback not in ("", FALLBACK_NEWEST):
        raise ValueError(f"fallback must be {FALLBACK_NEWEST!r}, got {fallback[:20]!r}")
    request = ImageRequest(
        kind=kind,
        lo=lo,
        hi=hi,
        contrast=check_mode(_one(q, "contrast", "specimen")),
        region=region,
        side=_whole("side", _one(q, "side", "100000"), 1),
        overlay=overlay == "1",
    )
    return ImageQuery(request, _whole("seq", seq, 0) if seq else None, fallback == FALLBACK_NEWEST)
