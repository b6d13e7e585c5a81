"""The supervisor: failing items are counted and set aside; dead threads are restarted, up to a limit."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest

from sbd_stream.frames import Frame, FrameQueue
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import FrameHeader
from sbd_stream.supervisor import StageState, Supervisor, describe


class Fatal(BaseException):
    """Not an Exception: the per-item guard lets it through, so it kills the stage's loop."""


def _wait(pred, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while not (ok := bool(pred())) and time.monotonic() < end:
        time.sleep(0.01)
    return ok


def test_a_failing_item_is_counted_logged_once_with_the_item_and_set_aside(
    caplog: pytest.LogCaptureFixture,
) -> None:
    m = Metrics()
    sup = Supervisor(m)
    cleaned: list[object] = []
    frame = Frame(FrameHeader("acq-1", 7, 0.0, (2, 3), "uint16", meta={"k": 1}), np.zeros((2, 3), np.uint16))

    def handle(item: Frame) -> None:
        raise ValueError("boom")

    with caplog.at_level(logging.ERROR, logger="sbd_stream.supervisor"):
        assert not sup.call("recorder", handle, frame, on_error=lambda it, exc: cleaned.append(it))
        assert sup.call("recorder", lambda it: None, frame)
    assert m.value("sbd_stage_errors_total", {"stage": "recorder", "reason": "ValueError"}) == 1
    assert cleaned == [frame]
    records = [r for r in caplog.records if r.exc_info]
    text = records[0].getMessage()
    assert len(records) == 1 and "acq='acq-1'" in text and "seq=7" in text
    q = sup.health()["quarantine"]
    assert len(q) == 1 and q[0]["stage"] == "recorder" and "boom" in q[0]["error"]


def test_describe_never_dumps_pixels() -> None:
    parts = [b"frame", b'{"acq": "x"}', b"\0" * 10_000]
    text = describe(parts)
    assert text.startswith("message of 3 parts") and len(text) <= 300
    assert "x" in describe(Frame(FrameHeader("x", 1, 0.0, (1, 1), "uint8"), np.zeros((1, 1), np.uint8)))


def test_a_dead_loop_is_restarted_counted_and_resources_released_once() -> None:
    m = Metrics()
    sup = Supervisor(m, max_restarts=3, backoff_s=0.01)
    runs: list[int] = []
    finalized: list[int] = []
    stop = threading.Event()

    def loop() -> None:
        runs.append(1)
        if len(runs) <= 2:
            raise Fatal("stage thread killed on purpose")
        stop.wait(10)

    th = sup.spawn("publisher", loop, finalize=lambda: finalized.append(1))
    assert _wait(lambda: len(runs) == 3 and sup.state("publisher") is StageState.up)
    assert m.value("sbd_stage_restarts_total", {"stage": "publisher"}) == 2
    assert m.value("sbd_stage_up", {"stage": "publisher"}) == 1
    h = sup.health()
    assert h["ok"] and h["stages"]["publisher"]["restarts"] == 2 and finalized == []
    stop.set()
    th.join(5)
    assert finalized == [1] and sup.state("publisher") is StageState.stopped
    assert m.value("sbd_stage_up", {"stage": "publisher"}) == 0 and sup.health()["ok"]


def test_restarts_exhausted_fail_the_stage_and_say_why() -> None:
    m = Metrics()
    sup = Supervisor(m, max_restarts=2, window_s=60, backoff_s=0.01)

    def loop() -> None:
        raise Fatal("always")

    th = sup.spawn("recorder", loop)
    th.join(10)
    assert not th.is_alive() and sup.failed.is_set()
    assert sup.state("recorder") is StageState.failed
    assert m.value("sbd_stage_restarts_total", {"stage": "recorder"}) == 2
    h = sup.health()
    assert not h["ok"] and "recorder" in h["failure"] and "always" in h["failure"]
    assert h["stages"]["recorder"]["state"] == "failed"


def test_a_loop_that_must_not_run_twice_fails_at_once() -> None:
    sup = Supervisor(Metrics())
    th = sup.spawn("replay", lambda: (_ for _ in ()).throw(Fatal("x")), restartable=False)
    th.join(5)
    assert sup.state("replay") is StageState.failed and sup.failed.is_set()


def test_control_messages_are_taken_beyond_the_bounds_and_never_evicted() -> None:
    evicted: list[object] = []
    depth: list[int] = []
    q = FrameQueue(2, drop_oldest=True, on_evict=evicted.append, on_change=depth.append)
    assert q.put("start", force=True)
    assert q.put("f1") and q.put("f2")  # full: f2 evicts f1, never the pinned start
    assert evicted == ["f1"]
    assert q.put("end", force=True) and q.put("f3")
    assert [q.get_nowait() for _ in range(len(q))] == ["start", "end", "f3"]
    assert depth[-1] == 0  # the gauge callback saw every change, down to empty
    full = FrameQueue(1)
    assert full.put("f") and not full.put("g") and full.put("series_end", force=True)
    assert len(full) == 2
