"""bench_ingest: receivers bind a port the OS picks before the sender starts, and a sender that cannot
send never keeps the benchmark from exiting (audit 26: `Address already in use`, then a hang).

The port used to be picked by a throwaway socket, closed, and bound again by the receiver; ZeroMQ closes
asynchronously, so the port could still be held. Now nothing is bound twice: the receiving socket binds
``tcp://127.0.0.1:*`` and the sender is told the port it holds.
"""

from __future__ import annotations

import time

import pytest
import zmq

from benchmarks import bench_ingest


def _bind_again_fails(endpoint: str) -> None:
    s = zmq.Context.instance().socket(zmq.PUB)
    try:
        with pytest.raises(zmq.ZMQError) as e:
            s.bind(endpoint)
        assert e.value.errno == zmq.EADDRINUSE
    finally:
        s.close(0)


def test_both_receivers_hold_their_port_before_any_sender_starts() -> None:
    sock, ep = bench_ingest.open_bare()
    try:
        assert not ep.endswith(":0") and not ep.endswith(":*")
        _bind_again_fails(ep)  # held by the receiver itself: no window for another socket to take it
    finally:
        sock.close(0)
    ing, ep, _done, _state = bench_ingest.open_ingest(1, 1024)
    try:
        assert not ep.endswith(":*")
        _bind_again_fails(ep)
    finally:
        ing.sock.close(0)


def test_the_benchmark_runs_beside_a_port_taken_by_someone_else() -> None:
    """Many receivers in a row, each on a port of its own, while another socket holds ports too."""
    squatter = zmq.Context.instance().socket(zmq.PUB)
    squatter.bind_to_random_port("tcp://127.0.0.1")
    try:
        r = bench_ingest.run((64, 64), "uint16", 20, 2)
    finally:
        squatter.close(0)
    assert len(r["runs_bare"]) == 2 and len(r["runs_ingest"]) == 2
    assert all(x > 0 for x in r["runs_bare"] + r["runs_ingest"])


def test_a_sender_nobody_subscribes_to_gives_up_and_never_blocks_exit() -> None:
    # bound, never subscribed: a bare PUB takes the connection but sends no subscription
    quiet = zmq.Context.instance().socket(zmq.PULL)
    port = quiet.bind_to_random_port("tcp://127.0.0.1")
    try:
        p = bench_ingest.start_sender(f"tcp://127.0.0.1:{port}", (8, 8), "uint16", 4, wait_s=0.5)
        assert p.daemon  # multiprocessing does not join it at exit
        p.join(120)  # the child's own wait ends it: no subscriber within 0.5 s
        assert p.exitcode not in (None, 0)
        stuck = bench_ingest.start_sender(f"tcp://127.0.0.1:{port}", (8, 8), "uint16", 4, wait_s=600)
        t0 = time.monotonic()
        bench_ingest.end_sender(stuck, timeout=0.5)  # one that would wait 10 min is ended
        assert not stuck.is_alive() and time.monotonic() - t0 < 60
    finally:
        quiet.close(0)
