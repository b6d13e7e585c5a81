"""The complete lane runs only when frames are recorded (audit h33).

Its frames go to the recording alone (to live subscribers they are old news: docs/service.md, "Two
lanes"). With ``record.enabled = false`` it denoised the live lane's skipped frames into nothing, took
the cores between bursts, held a stop for up to ``complete_timeout_s`` (16 s after Ctrl-C of a 2048^2
``demo --no-record``) and warned that the frames it left "are recorded" for ``replay --offline``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from sbd_stream.config import load_settings
from sbd_stream.metrics import Metrics
from sbd_stream.service.backlog import Backlog
from sbd_stream.service.build import complete_lane


def test_no_recording_no_complete_lane(caplog: pytest.LogCaptureFixture) -> None:
    s = load_settings(overrides={"record": {"enabled": False}})
    assert s.lanes.live and s.lanes.complete  # both lanes asked for (the defaults)
    with caplog.at_level(logging.INFO, logger="sbd_stream.service.build"):
        assert complete_lane(s, Metrics()) is None
    assert any("complete lane off" in r.getMessage() for r in caplog.records)


def test_recording_keeps_the_complete_lane(tmp_path: Path) -> None:
    s = load_settings(overrides={"record": {"enabled": True, "directory": str(tmp_path)}})
    assert isinstance(complete_lane(s, Metrics()), Backlog)
    off = load_settings(overrides={"record": {"directory": str(tmp_path)}, "lanes": {"complete": False}})
    assert complete_lane(off, Metrics()) is None
