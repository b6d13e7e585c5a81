"""The demo's live-lane summary reads coherently for runs shorter than one whole second."""

from __future__ import annotations

import pytest

from sbd_stream.protocol import FrameHeader
from sbd_stream.service.demo import Received, live_lane


def _shown(times: list[float], latency: float = 0.05) -> list[Received]:
    return [
        Received(b"denoised", "a", k, None, None, FrameHeader("a", k, t - latency, (4, 4), "float32"), t)
        for k, t in enumerate(times)
    ]


def test_a_run_shorter_than_a_second_has_no_per_second_figures_but_a_rate() -> None:
    """It used to say ``per_second: []`` beside ``per_second_min: 5`` (all frames, as if one second)."""
    short = live_lane(_shown([100.0, 100.1, 100.2, 100.3, 100.4]))
    assert short["frames"] == 5 and short["per_second"] == []
    assert short["per_second_min"] is None and short["per_second_mean"] is None
    assert short["rate_hz"] == pytest.approx(10.0) and short["latency_s"]["p50"] == pytest.approx(0.05)
    assert live_lane(_shown([100.0]))["rate_hz"] is None  # one frame: no span to divide by
    none = live_lane([])
    assert none["frames"] == 0 and none["per_second_min"] is None and none["rate_hz"] is None


def test_whole_seconds_are_counted_and_the_rate_covers_the_whole_span() -> None:
    times = [100.0 + 0.1 * k for k in range(26)]  # 2.5 s at 10 Hz: seconds 0 and 1 are whole
    s = live_lane(_shown(times))
    assert s["per_second"] == [10, 10] and s["per_second_min"] == 10 and s["per_second_mean"] == 10.0
    assert s["rate_hz"] == pytest.approx(10.0)
