"""Peers that fail the input's handshake by the thousand: every one counted, only a few log lines.

An unauthenticated peer re-dialling a bound input wrote one WARNING per failed handshake (8,328 lines
in seconds in the audit). Now the first failure of each cause is a WARNING, the next ones DEBUG, and at
most one summary line a minute ("N more ... since HH:MM:SS"); ``sbd_input_disconnects_total`` still
counts each. Real bound receiver, real TCP peers speaking no ZMTP.
"""

from __future__ import annotations

import logging
import socket
import time

import pytest
from conftest import wait_until

from sbd_stream.config import IngestSettings
from sbd_stream.log_limit import RateLimitedLog
from sbd_stream.metrics import Metrics
from sbd_stream.sources.receiver import open_receiver

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _junk_peers(port: int, n: int) -> None:
    for _ in range(n):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.sendall(b"GET / HTTP/1.0\r\n\r\n")  # not ZMTP: libzmq fails the handshake


def _handshake_lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "sbd_stream.sources.transport" and r.levelno == level and "handshake" in r.getMessage()
    ]


def test_failed_handshakes_are_counted_each_and_logged_once_then_summed_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = IngestSettings.model_validate({"endpoint": "tcp://127.0.0.1:*", "mode": "bind"})
    m = Metrics()
    ing = open_receiver(settings, m, lambda f: None, lambda s: None)
    port = int(ing.endpoint.rsplit(":", 1)[1])
    ing.start()
    handshakes = lambda: m.value("sbd_input_disconnects_total", {"cause": "handshake"})  # noqa: E731
    try:
        with caplog.at_level(logging.DEBUG, logger="sbd_stream.sources.transport"):
            _junk_peers(port, 40)
            assert wait_until(lambda: handshakes() >= 40)
            assert len(_handshake_lines(caplog, logging.WARNING)) == 1  # before: 40
            assert len(_handshake_lines(caplog, logging.DEBUG)) >= 39
            ing.watch.log.every_s = 0.3  # the minute between summaries, shortened for the test
            time.sleep(0.4)
            _junk_peers(port, 5)
            assert wait_until(lambda: handshakes() >= 45)
            assert wait_until(lambda: any(" more " in ln for ln in _handshake_lines(caplog, logging.WARNING)))
        summary = next(ln for ln in _handshake_lines(caplog, logging.WARNING) if " more " in ln)
        assert "handshake failures since" in summary and "logged at DEBUG" in summary
        assert handshakes() == 45  # the counter counts every one
    finally:
        ing.close()


def test_a_burst_that_stopped_is_summed_up_by_the_next_tick(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("sbd_stream.test_log_limit")
    limit = RateLimitedLog(log, every_s=0.2)
    with caplog.at_level(logging.DEBUG, logger=log.name):
        for i in range(10):
            limit.log("a", logging.WARNING, "things", "thing %d", i)
        limit.log("b", logging.ERROR, "others", "other")
        limit.tick()  # not due yet
        time.sleep(0.25)
        limit.tick()
        limit.tick()  # nothing new since: no second summary
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == log.name]
    assert lines[0] == (logging.WARNING, "thing 0") and (logging.ERROR, "other") in lines
    assert sum(1 for lv, _ in lines if lv == logging.DEBUG) == 9
    summaries = [msg for lv, msg in lines if " more " in msg]
    assert len(summaries) == 1 and summaries[0].startswith("9 more things since ")
