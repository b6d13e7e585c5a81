"""The image API's percentile defaults are the page's, as docs/viewer.md's path (``lo=1&hi=99.5``) reads.

Found by a client run: ``/image/raw.png?lo=-1`` answered ``need 0 <= lo < hi <= 100, got lo=-1.0 hi=99.0``:
a request without ``hi`` was windowed at the 99th percentile, while the documented path, the page's
*high %* control and ``ImageRequest``'s own default say 99.5, and the page asks the LLR map's limit at
its *LLR range %* of 98. A script that leaves them out now gets the picture the page shows.
"""

from __future__ import annotations

import re
from pathlib import Path

from sbd_stream.sinks.viewer.images import ImageRequest
from sbd_stream.sinks.viewer.query import parse_image_query

PAGE = Path(__file__).resolve().parents[2] / "sbd_stream" / "sinks" / "viewer" / "static" / "index.html"


def _page_value(control: str) -> float:
    m = re.search(rf'<input id="{control}"[^>]*value="([0-9.]+)"', PAGE.read_text())
    assert m, control
    return float(m.group(1))


def test_a_request_without_percentiles_gets_the_pages_window() -> None:
    for kind in ("raw", "denoised"):
        req = parse_image_query(kind, {}).request
        assert (req.lo, req.hi) == (_page_value("lo"), _page_value("hi")) == (1.0, 99.5)
        assert req.hi == ImageRequest(kind=kind).hi


def test_a_request_for_the_llr_map_without_hi_gets_the_pages_llr_range() -> None:
    req = parse_image_query("llr", {}).request
    assert req.hi == _page_value("llrhi") == 98.0
    assert parse_image_query("llr", {"hi": ["99.9"]}).request.hi == 99.9  # given: kept
