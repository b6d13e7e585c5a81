"""Time settings and options have finite upper bounds (audit "clocks", defect 8).

``inf`` / NaN were refused, but a finite huge value overflowed where it was used: ``emulate --rate 1e-11``
(a traceback after the banner), ``emulate --wait 1e10`` (ZeroMQ's poll), ``SBD_STOP_TIMEOUT_S=1e10``
(a traceback at shutdown, exit 1 instead of 0). Each is now refused before anything starts, in one line.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sbd_stream.cli import app, time_options
from sbd_stream.config_types import MAX_TIME_S, MIN_RATE_HZ

pytestmark = pytest.mark.integration


def _one_error_line(res) -> str:
    out = res.output.strip()
    assert res.exit_code == 2 and "Traceback" not in out, out
    return out


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"SBD_STOP_TIMEOUT_S": "1e10"}, "stop_timeout_s"),
        ({"SBD_LANES__COMPLETE_TIMEOUT_S": "1e10"}, "lanes.complete_timeout_s"),
        ({"SBD_RECORD__IDLE_CLOSE_S": "1e10"}, "record.idle_close_s"),
        ({"SBD_SUPERVISION__RESTART_WINDOW_S": "1e10"}, "supervision.restart_window_s"),
        ({"SBD_DENOISE__BATCH_TIMEOUT_MS": "1e13"}, "denoise.batch_timeout_ms"),
    ],
)
def test_a_huge_time_setting_is_refused_in_one_line(env: dict[str, str], name: str) -> None:
    res = CliRunner().invoke(app, ["serve", "--no-record", "--metrics-port", "0"], env=env)
    out = _one_error_line(res)
    assert out.startswith(f"error: {name}: Input should be less than or equal to") and "\n" not in out, out


def test_a_huge_dectris_series_timeout_flag_is_refused_naming_the_flag() -> None:
    flags = ["serve", "--no-record", "--dialect", "dectris-stream-v1", "--series-timeout", "1e10"]
    out = _one_error_line(CliRunner().invoke(app, flags))
    assert out.startswith("error: --series-timeout") and "less than or equal to 1000000" in out, out


@pytest.mark.parametrize("command", ["emulate", "demo"])
def test_a_rate_too_slow_to_pace_is_refused_before_the_banner(command: str) -> None:
    res = CliRunner().invoke(app, [command, "--rate", "1e-11", "--frames", "3"])
    out = _one_error_line(res)
    assert out.startswith("error: --rate must be a number of frames per second >= 0") and "1e-11" in out
    assert "emulating" not in out and "\n" not in out


@pytest.mark.parametrize("command", ["emulate", "replay"])
def test_a_huge_wait_is_refused(command: str, tmp_path: Path) -> None:
    args = [str(tmp_path / "r.nxs"), "--publish"] if command == "replay" else ["--frames", "3"]
    res = CliRunner().invoke(app, [command, *args, "--wait", "1e10"])
    out = _one_error_line(res)
    assert out == "error: --wait must be at most 1e+06 s (~11.6 days), got 1e+10", out


def test_the_cli_bounds_are_the_settings_bounds() -> None:
    """The CLI imports its modules lazily, so it states the bounds again: they must agree."""
    t = time_options
    assert (t.MAX_WAIT_S, t.MIN_RATE_HZ) == (MAX_TIME_S, MIN_RATE_HZ)
    assert t.rate_problem(0.0) is None and t.rate_problem(MIN_RATE_HZ) is None
    assert t.rate_problem(MIN_RATE_HZ / 2) is not None and t.rate_problem(float("nan")) is not None
    assert t.wait_problem(MAX_TIME_S) is None and t.wait_problem(float("inf")) is None  # "finite": settings


def test_a_huge_merge_gap_timeout_is_refused() -> None:
    res = CliRunner().invoke(app, ["merge", "-i", "tcp://127.0.0.1:1", "--gap-timeout", "1e10"])
    out = _one_error_line(res)
    assert "--gap-timeout" in out, out
