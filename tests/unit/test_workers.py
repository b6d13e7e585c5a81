"""Engine workers: how they are planned on a machine, and the reorderer that keeps frames in order."""

from __future__ import annotations

import random
import threading

import pytest

from sbd_stream.service.workers import Failed, Reorderer, plan_workers, worker_stage_name


def test_default_is_one_worker_per_gpu_else_one() -> None:
    assert [s.device for s in plan_workers(None, None, None, cuda_devices=0)] == [None]
    gpus = plan_workers(None, None, None, cuda_devices=4)
    assert [s.device for s in gpus] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert all(s.threads is None for s in gpus)  # a GPU worker does not take a share of the CPU
    assert [s.device for s in plan_workers(None, ["cuda:1", "cuda:3"], None, cuda_devices=4)] == [
        "cuda:1",
        "cuda:3",
    ]


def test_cpu_cores_are_split_between_workers() -> None:
    specs = plan_workers(2, None, None, cuda_devices=0, cores=8)
    assert [(s.index, s.device, s.threads) for s in specs] == [(0, None, 4), (1, None, 4)]
    assert [s.threads for s in plan_workers(3, None, "cpu", cores=2)] == [1, 1, 1]  # never below 1
    assert plan_workers(1, None, "cpu", cores=8)[0].threads is None  # one worker: the backend's default
    assert [s.threads for s in plan_workers(2, None, "cpu", threads_per_worker=3, cores=2)] == [3, 3]


def test_devices_are_cycled_over_more_workers() -> None:
    specs = plan_workers(4, ["cuda:0", "cuda:1"], None, cuda_devices=2)
    assert [s.device for s in specs] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert [s.device for s in plan_workers(2, None, "cuda:1", cuda_devices=2)] == ["cuda:1", "cuda:1"]


def test_worker_stage_names_keep_the_single_worker_name() -> None:
    assert [worker_stage_name(i) for i in range(3)] == ["denoise", "denoise-1", "denoise-2"]


def test_reorderer_releases_in_ticket_order_whatever_the_completion_order() -> None:
    out: list[int] = []
    depth: list[int] = []
    r = Reorderer(out.append, depth.append)
    tickets = [r.take() for _ in range(6)]
    assert r.done(tickets[2], 2) == 0 and r.done(tickets[1], 1) == 0  # held: ticket 0 is not done
    assert depth[-1] == 2
    assert r.done(tickets[0], 0) == 3
    assert r.done(tickets[4], 4) == 0 and r.done(tickets[3], 3) == 2 and r.done(tickets[5], 5) == 1
    assert out == [0, 1, 2, 3, 4, 5] and r.idle() and depth[-1] == 0


def test_reorderer_refuses_unknown_or_repeated_tickets() -> None:
    r = Reorderer(lambda _x: None)
    t = r.take()
    with pytest.raises(ValueError):
        r.done(t + 1, "never handed out")
    r.done(t, "x")
    with pytest.raises(ValueError):
        r.done(t, "again")


def test_a_failed_ticket_is_released_empty_and_does_not_block_the_line() -> None:
    out: list[object] = []
    r = Reorderer(out.append)
    a, b, c = r.take(), r.take(), r.take()
    r.done(c, "c")
    r.done(b, Failed([]))
    r.done(a, "a")
    assert out[0] == "a" and isinstance(out[1], Failed) and out[2] == "c"


def test_a_raising_sink_does_not_wedge_the_tickets_behind() -> None:
    seen: list[int] = []

    def emit(x: int) -> None:
        seen.append(x)
        if x == 1:
            raise RuntimeError("sink broke")

    r = Reorderer(emit)
    ts = [r.take() for _ in range(3)]
    for t in reversed(ts):
        r.done(t, t)
    assert seen == [0, 1, 2] and r.idle()


def test_reorderer_under_concurrent_workers_emits_every_ticket_once_in_order() -> None:
    out: list[int] = []
    r = Reorderer(out.append)
    lock = threading.Lock()
    n = 2000

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        while True:
            with lock:
                if len(taken) >= n:
                    return
                t = r.take()
                taken.append(t)
            if rng.random() < 0.3:
                threading.Event().wait(rng.random() * 1e-4)
            r.done(t, t)

    taken: list[int] = []
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert out == list(range(n))
