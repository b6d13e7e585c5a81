"""bench_curve: the clock stops at the last receipt and drops are counted, never waited for."""

from __future__ import annotations

import time

from benchmarks import bench_curve


def test_a_stall_is_judged_against_the_receipt_rate() -> None:
    t0 = time.perf_counter() - 1.0
    fast = [t0 + 0.001 * i for i in range(1, 101)]  # 100 receipts in 0.1 s, then 0.9 s of nothing
    assert bench_curve._stalled(fast, 0, t0)
    slow = [t0 + 0.2 * i for i in range(1, 5)]  # one receipt every 0.2 s, the last 0.2 s ago
    assert not bench_curve._stalled(slow, 0, t0)
    assert not bench_curve._stalled([t0], 1, time.perf_counter())  # nothing yet, just started


def test_small_messages_are_timed_to_the_last_receipt() -> None:
    r = bench_curve.run(False, 10_000, 0.3, None)
    assert r["messages"] > 0 and r["messages"] + r["dropped"] == r["sent"] and r["dropped"] >= 0
    assert r["seconds"] < 5.0  # a 0.3 s run; it was seconds + 10 whenever PUB dropped one
