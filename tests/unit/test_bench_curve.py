"""bench_curve: the clock stops at the last receipt and drops are counted, never waited for.

Neither test reads this machine's speed: the stall rule is judged at fixed times (``now`` passed in),
and the run's duration is checked against the receipt times the benchmark itself took, not against a
wall-clock bound a loaded CI runner could exceed."""

from __future__ import annotations

import threading
import time
import types

import pytest

from benchmarks import bench_curve


def test_a_stall_is_judged_against_the_receipt_rate() -> None:
    t0 = 1000.0
    stalled = bench_curve._stalled
    fast = [t0 + 0.001 * i for i in range(1, 101)]  # 100 receipts in 0.1 s: a 1 ms interval
    assert stalled(fast, 0, t0, t0 + 1.0)  # then 0.9 s of nothing
    assert not stalled(fast, 0, t0, fast[-1] + 0.19)  # 10 intervals are 10 ms, but never under 0.2 s
    assert stalled(fast, 0, t0, fast[-1] + 0.21)
    slow = [t0 + 0.2 * i for i in range(1, 5)]  # one receipt every 0.2 s: 10 intervals are 2 s
    assert not stalled(slow, 0, t0, slow[-1] + 0.2)
    assert not stalled(slow, 0, t0, slow[-1] + 1.99)
    assert stalled(slow, 0, t0, slow[-1] + 2.01)
    # nothing received since t1 (n0 = 1 receipt before it): FIRST_S before the first is given up
    t1 = t0 + 5.0
    assert not stalled([t0], 1, t1, t1)
    assert not stalled([t0], 1, t1, t1 + bench_curve.FIRST_S - 0.01)
    assert stalled([t0], 1, t1, t1 + bench_curve.FIRST_S + 0.01)


def test_small_messages_are_timed_to_the_last_receipt(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's seconds are its last receipt's time less its start, exactly: it was seconds + 10 (the
    wait for messages PUB had dropped) whenever PUB dropped one. The receiving thread reads the clock
    only to stamp a receipt, so its readings are the receipts."""
    main = threading.get_ident()
    receipts: list[float] = []
    sender: list[float] = []

    def perf_counter() -> float:
        t = time.perf_counter()
        (sender if threading.get_ident() == main else receipts).append(t)
        return t

    clock = types.SimpleNamespace(perf_counter=perf_counter, sleep=time.sleep)
    monkeypatch.setattr(bench_curve, "time", clock)
    r = bench_curve.run(False, 10_000, 0.3, None)
    assert r["messages"] > 0 and r["messages"] + r["dropped"] == r["sent"] and r["dropped"] >= 0
    # the start: the sender's reading that the run's seconds count from; the end: the last receipt
    starts = [t for t in sender if r["seconds"] == receipts[-1] - t]
    assert starts, (r, receipts[-3:])
    timed = [t for t in receipts if t > starts[0]]
    assert len(timed) == r["messages"]  # every timed message, and only those, before the clock stops
