"""A refused message's log line points to the dialect's own docs, and names what meta may not hold.

Before (DECTRIS client audit h29): the pointer was told from the line's text, which for a series message
("series_start of ...") never started with "dectris", so a DECTRIS series with a bad meta pointed to
docs/wire-format.md; and an integer no float holds was called "NaN or Infinity".
"""

from __future__ import annotations

import logging

import pytest

from sbd_stream.config import IngestSettings
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import TOPIC_SERIES_START, SeriesHeader, SeriesMessage
from sbd_stream.sources.dialect import Emitter
from sbd_stream.sources.receiver import open_dialect


@pytest.mark.parametrize(
    ("dialect", "docs"),
    [("dectris-stream-v1", "docs/dectris.md"), ("dectris-stream-v2", "docs/dectris.md"),
     ("wire-v1", "docs/wire-format.md")],
)  # fmt: skip
def test_a_series_message_with_bad_meta_points_to_its_dialects_docs(
    dialect: str, docs: str, caplog: pytest.LogCaptureFixture
) -> None:
    m = Metrics()
    emit = Emitter(m, lambda _f: None, lambda _s: None)
    open_dialect(IngestSettings(input={"dialect": dialect}), emit)
    caplog.set_level(logging.WARNING, "sbd_stream.sources.dialect")
    emit.series(SeriesMessage(TOPIC_SERIES_START, SeriesHeader("acq", 1.0, {"nimages": 10**400})))
    assert m.value("sbd_frames_malformed_total", {"reason": "bad_meta"}) == 1
    (line,) = [r.getMessage() for r in caplog.records]
    assert f"(reasons: {docs})" in line and "a number no float holds" in line, line
