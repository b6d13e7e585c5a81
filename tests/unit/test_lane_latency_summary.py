"""The summary's lane latencies: the complete lane waits minutes, and its quantiles read 30 s (the last
finite bucket) whatever the wait; the soak audit saw 30 / 30 / 30 s for frames that waited ~170 s."""

from __future__ import annotations

import pytest

from sbd_stream.metrics import Metrics
from sbd_stream.metrics_summary import lane_latency


def test_complete_lane_latency_is_resolved_beyond_30_s_and_has_its_mean() -> None:
    m = Metrics()
    for _ in range(100):
        m.lane_latency.labels(lane="complete").observe(170.0)
    lat = lane_latency(m, "complete")
    assert 120.0 < lat["p50_s"] <= 300.0 and lat["mean_s"] == pytest.approx(170.0)
    assert "above_s" not in lat


def test_a_quantile_beyond_the_last_bucket_is_not_reported_as_that_bucket() -> None:
    m = Metrics()
    for v in [0.01] * 50 + [4000.0] * 50:
        m.lane_latency.labels(lane="complete").observe(v)
    lat = lane_latency(m, "complete")
    assert lat["p50_s"] is not None and lat["p50_s"] <= 0.01
    assert lat["p90_s"] is None and lat["p99_s"] is None and lat["above_s"] == 1800.0
    assert lat["mean_s"] == pytest.approx(2000.005)


def test_an_empty_lane_has_no_latencies() -> None:
    lat = lane_latency(Metrics(), "live")
    assert lat["p50_s"] is None and lat["mean_s"] is None
