"""The readings of the metrics people see: the status line's rate is the stream's rate now, and a
summary's counts are whole numbers."""

from __future__ import annotations

from sbd_stream.metrics import Metrics
from sbd_stream.metrics_summary import status_line, summary


def test_the_status_rate_is_over_the_last_interval_not_the_uptime() -> None:
    m = Metrics()
    m.frames_received.inc(20)
    assert "in 20 (2.0/s)" in status_line(m, 10.0)  # a stream that started late: first line, since start
    m.frames_received.inc(40)
    assert "in 60 (20.0/s)" in status_line(m, 12.0)  # 40 frames in 2 s: 20 Hz, not 60 / 12 = 5 Hz
    assert "in 60 (0.0/s)" in status_line(m, 14.0)  # the input stopped: 0, not a slowly falling mean
    other = Metrics()  # each service's metrics keep their own previous reading
    assert "(0.0/s)" in status_line(other, 1.0)


def test_summary_counts_are_integers() -> None:
    m = Metrics()
    m.frames_received.inc(3)
    s = summary(m, 1.5)
    assert s["frames_received"] == 3 and isinstance(s["frames_received"], int)
    assert all(isinstance(s[k], int) for k in ("malformed", "published", "recorded_raw", "recorded_denoised"))
