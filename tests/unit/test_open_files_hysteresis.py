"""The open-descriptor check (sbd_stream/open_files.py): one warning a crossing of 90 %, re-armed under 80 %.

Why: near its open-file limit a bound ZeroMQ input refuses connections inside libzmq without a line;
the service now says so, but a service that stays near its limit must not write a line every check.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from sbd_stream.metrics import Metrics
from sbd_stream.open_files import OpenFilesCheck, should_warn


def _warnings(counts: list[int], limit: int) -> list[int]:
    """The indexes of ``counts`` at which a check warns."""
    warned, out = False, []
    for i, n in enumerate(counts):
        warn, warned = should_warn(warned, n, limit)
        if warn:
            out.append(i)
    return out


def test_a_count_that_stays_over_90_percent_warns_once() -> None:
    assert _warnings([10, 50, 90, 91, 95, 100, 99, 91], 100) == [3]  # 90 of 100 is not over 90 %


def test_a_count_wavering_between_80_and_90_percent_does_not_warn_again() -> None:
    assert _warnings([91, 85, 91, 80, 95, 88, 91], 100) == [0]  # 80 is not under 80 %


def test_a_count_that_fell_under_80_percent_warns_at_its_next_crossing() -> None:
    assert _warnings([91, 79, 91, 50, 85, 92, 92], 100) == [0, 2, 5]


def test_the_state_comes_back_as_it_went_in_between_the_thresholds() -> None:
    assert should_warn(True, 85, 100) == (False, True)
    assert should_warn(False, 85, 100) == (False, False)
    assert should_warn(False, 1000, 1024) == (True, True)  # 97.7 %
    assert should_warn(True, 900, 1024) == (False, True)  # 87.9 %: still warned
    assert should_warn(True, 818, 1024) == (False, False)  # 79.9 %: re-armed


def test_the_registry_exports_the_descriptors_really_open(tmp_path: Path) -> None:
    """``sbd_open_files`` follows files this process opens; ``sbd_open_files_limit`` is ``ulimit -n``."""
    resource = pytest.importorskip("resource")
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("counting open descriptors needs /proc/self/fd (Linux)")
    m = Metrics()
    before = m.value("sbd_open_files")
    files = [(tmp_path / f"f{i}").open("w") for i in range(40)]
    try:
        assert m.value("sbd_open_files") >= before + 40
    finally:
        for f in files:
            f.close()
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY:
        assert m.value("sbd_open_files_limit") == soft


def test_the_check_logs_one_warning_naming_both_numbers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Checks of a process over 90 % of its limit log one WARNING, however many there are."""
    resource = pytest.importorskip("resource")
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("counting open descriptors needs /proc/self/fd (Linux)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    check = OpenFilesCheck()
    files = [(tmp_path / f"f{i}").open("w") for i in range(40)]  # so that n + 3 is over 90 % of n + 3
    try:
        n_open = check.check()[0]
        assert n_open is not None and n_open >= 40
        low = n_open + 3  # the limit just over what is open (existing descriptors stay open)
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
        try:
            with caplog.at_level(logging.INFO, logger="sbd_stream.open_files"):
                for _ in range(5):
                    check.check()
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    finally:
        for f in files:
            f.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert f"of the open-file limit {low}" in warnings[0], warnings
    assert "refused silently" in warnings[0] and "ulimit -n" in warnings[0] and "LimitNOFILE" in warnings[0]
