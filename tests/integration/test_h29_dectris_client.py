"""Findings of an independent DECTRIS client (audit 29): what a series that pauses, joins or
declares an absurd image count leaves in the series messages the recorder turns into parts.

The state machine is fed parts built from the published formats, as the DCU sends them."""

from __future__ import annotations

import json
import time

import numpy as np

from sbd_stream.config import DectrisInput
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import DEFAULT_MAX_PAYLOAD, SeriesMessage
from sbd_stream.sources.dectris.acquisition import DectrisDialect
from sbd_stream.sources.dectris.sim import v1_end, v1_frame, v1_header, v2_end, v2_image, v2_start
from sbd_stream.sources.dialect import Emitter


def _make(dialect: str) -> tuple[DectrisDialect, list[SeriesMessage], list[object]]:
    series: list[SeriesMessage] = []
    frames: list[object] = []
    inp = DectrisInput.model_validate({"dialect": dialect, "series_timeout_s": 5.0})
    emit = Emitter(Metrics(), frames.append, series.append)
    return DectrisDialect(inp, DEFAULT_MAX_PAYLOAD, emit), series, frames


def _frame(i: int) -> np.ndarray:
    return np.random.default_rng(i).poisson(0.45, (12, 20)).astype(np.uint16)


def test_a_resumed_series_start_carries_the_series_configuration() -> None:
    """The part a resumed series continues in got a start of ``{series, resumed}`` only: the detector
    configuration (count time, frame time, nimages x ntrigger) was missing from that part's
    ``series_meta`` and ``count_time`` / ``frame_time`` datasets, though it is the same series."""
    ing, series, _ = _make("dectris-stream-v1")
    config = {"nimages": 1, "ntrigger": 3, "count_time": 0.002, "frame_time": 0.0025}
    ing.handle(v1_header(5, config))
    ing.handle(v1_frame(_frame(0), 5, 0))
    assert ing.check_timeout(time.monotonic() + 60.0)  # the next trigger is late
    ing.handle(v1_frame(_frame(1), 5, 1))
    first, resumed = series[0].header, series[2].header
    assert resumed.meta["resumed"] is True and resumed.n_frames == 3
    assert resumed.meta["config"] == first.meta["config"] == config
    assert resumed.meta["dialect"] == "dectris-stream-v1" and resumed.meta["series"] == 5


def test_a_joined_series_start_names_its_dialect() -> None:
    """A joined series' ``series_meta`` was ``{series, joined}``: it did not say which stream it came from."""
    ing, series, _ = _make("dectris-stream-v2")
    ing.handle([v2_image(_frame(0), 9, "u9", 3)])
    assert series[0].header.meta == {"dialect": "dectris-stream-v2", "series": 9, "joined": True}


def test_an_image_count_too_large_for_a_float_does_not_cost_the_series_end() -> None:
    """``nimages`` (v1) or ``number_of_images`` (v2) past a float's range became ``n_frames`` and the end's
    ``frames_expected``: the edge refused the ``series_end`` too (``bad_meta``), so the recording's part
    stayed open until ``record.idle_close_s``. The start, which states the number, is refused (documented)."""
    ing, series, frames = _make("dectris-stream-v1")
    header = v1_header(6, None)[0]
    ing.handle([header, json.dumps({"nimages": 10**400, "ntrigger": 1}).encode()])
    ing.handle(v1_frame(_frame(0), 6, 0))
    ing.handle(v1_end(6))
    assert [s.topic for s in series] == [b"series_end"] and len(frames) == 1
    assert ing.metrics.value("sbd_frames_malformed_total", {"reason": "bad_meta"}) == 1
    assert "frames_expected" not in series[0].header.meta

    ing, series, frames = _make("dectris-stream-v2")
    ing.handle([v2_start(7, "u7", (12, 20), np.uint16, 10**400)])  # a valid CBOR bignum
    ing.handle([v2_image(_frame(0), 7, "u7", 0)])
    ing.handle([v2_end(7, "u7")])
    assert [s.topic for s in series] == [b"series_end"] and len(frames) == 1
    assert ing.metrics.value("sbd_frames_malformed_total", {"reason": "bad_meta"}) == 1
    assert "frames_expected" not in series[0].header.meta
