"""Ingest rate on loopback: the service's wire-v1 receiver against a bare pyzmq receive loop, same run.

A sender process publishes pre-encoded wire-format frames as fast as it can; the receiver is either a
bare ``recv_multipart(copy=False)`` loop or the service's receiver (``open_receiver``: decode,
validate, sequence accounting, hand-off). Ratio = receiver frames/s / bare frames/s.

    python -m benchmarks.bench_ingest [--quick] [--frames N]

Ports: each receiving socket binds ``tcp://127.0.0.1:*`` and the sender is told the port it got. A port
picked by a throwaway socket and bound again a moment later (what this benchmark did) can still be held,
since ZeroMQ closes sockets asynchronously: ``Address already in use`` in 2 of 20 binds (audit 26). The
sender is a daemon child that gives up waiting for a subscriber, and is ended if it outlives its run, so
a failed run exits instead of hanging in multiprocessing's join at exit.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import threading
import time

import numpy as np
import zmq

from benchmarks.common import table, write_result
from sbd_stream.config import IngestSettings
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import encode_frame
from sbd_stream.sources.receiver import Receiver, open_receiver

SUBSCRIBE_WAIT_S = 30.0  # a sender whose receiver never subscribes gives up (and the child ends)


def _sender(
    endpoint: str, shape: tuple[int, int], dtype: str, n: int, wait_s: float = SUBSCRIBE_WAIT_S
) -> None:
    ctx = zmq.Context()
    s = ctx.socket(zmq.XPUB)
    s.setsockopt(zmq.SNDHWM, 0)
    s.setsockopt(zmq.RCVTIMEO, int(wait_s * 1000))
    s.connect(endpoint)
    try:
        s.recv_multipart()  # wait for the subscription
    except zmq.Again:
        s.close(0)
        ctx.term()
        raise SystemExit(f"bench_ingest sender: no subscriber on {endpoint} within {wait_s:g} s") from None
    time.sleep(0.2)
    frame = np.random.default_rng(0).poisson(0.45, shape).astype(dtype)
    for seq in range(n):
        s.send_multipart(encode_frame(frame, "bench", seq, time.time()), copy=False)
    s.close(linger=-1)
    ctx.term()


def open_bare() -> tuple[zmq.Socket, str]:
    """The bare SUB socket, bound to a port the OS picks, and its endpoint (bound before any sender)."""
    sock: zmq.Socket = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.setsockopt(zmq.RCVTIMEO, 10000)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    return sock, f"tcp://127.0.0.1:{port}"


def _bare(sock: zmq.Socket, n: int) -> tuple[int, float]:
    got, t0 = 0, 0.0
    try:
        while got < n:
            sock.recv_multipart(copy=False)
            if got == 0:
                t0 = time.perf_counter()
            got += 1
    except zmq.Again:
        pass
    dt = time.perf_counter() - t0
    sock.close(0)
    return got, dt


def open_ingest(n: int, max_payload: int) -> tuple[Receiver, str, threading.Event, dict[str, float]]:
    """The service's receiver bound to ``tcp://127.0.0.1:*`` (its ``endpoint`` is the port it got), an
    event set at the ``n``-th frame and the timing state its callback fills in."""
    done = threading.Event()
    state = {"n": 0, "t0": 0.0, "t1": 0.0}

    def on_frame(_f: object) -> None:
        if state["n"] == 0:
            state["t0"] = time.perf_counter()
        state["n"] += 1
        if state["n"] >= n:
            state["t1"] = time.perf_counter()
            done.set()

    ing = open_receiver(
        IngestSettings.model_validate(
            {"endpoint": "tcp://127.0.0.1:*", "mode": "bind", "rcvhwm": 0, "max_payload_bytes": max_payload}
        ),
        Metrics(),
        on_frame,
    )
    return ing, ing.endpoint, done, state


def _ingest(ing: Receiver, done: threading.Event, state: dict[str, float]) -> tuple[int, float]:
    ing.start()
    done.wait(60)
    ing.stop()
    ing.join(5)
    t1 = state["t1"] or time.perf_counter()
    return int(state["n"]), t1 - state["t0"]


def run(shape: tuple[int, int], dtype: str, n: int, repeats: int) -> dict:
    nbytes = shape[0] * shape[1] * np.dtype(dtype).itemsize
    rows: dict[str, list[float]] = {"bare": [], "ingest": []}
    for _ in range(repeats):
        for kind in ("bare", "ingest"):
            if kind == "bare":
                sock, ep = open_bare()
                p = start_sender(ep, shape, dtype, n)
                got, dt = _bare(sock, n)
            else:
                ing, ep, done, state = open_ingest(n, max(nbytes, 1))
                p = start_sender(ep, shape, dtype, n)
                got, dt = _ingest(ing, done, state)
            end_sender(p)
            rows[kind].append((got - 1) / dt if got > 1 else 0.0)
    bare, ingest = float(np.median(rows["bare"])), float(np.median(rows["ingest"]))
    return {
        "shape": f"{shape[0]}x{shape[1]}",
        "dtype": dtype,
        "frames": n,
        "MB_per_frame": nbytes / 1e6,
        "bare_fps": bare,
        "ingest_fps": ingest,
        "ingest_GBps": ingest * nbytes / 1e9,
        "ratio": ingest / bare if bare else float("nan"),
        "runs_bare": rows["bare"],
        "runs_ingest": rows["ingest"],
    }


def start_sender(
    endpoint: str, shape: tuple[int, int], dtype: str, n: int, wait_s: float = SUBSCRIBE_WAIT_S
) -> mp.process.BaseProcess:
    """The sender child (spawned, daemon: never joined at exit) publishing to an already bound port."""
    p = mp.get_context("spawn").Process(target=_sender, args=(endpoint, shape, dtype, n, wait_s), daemon=True)
    p.start()
    return p


def end_sender(p: mp.process.BaseProcess, timeout: float = 60.0) -> None:
    """Wait for the sender to finish sending; one that has not by then is ended (SIGTERM, then SIGKILL)."""
    p.join(timeout)
    if p.is_alive():
        p.terminate()
        p.join(5)
    if p.is_alive():
        p.kill()
        p.join(5)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--frames", type=int, default=None, help="frames per run, both sizes (a smoke test)")
    a = ap.parse_args(argv)
    rep = 1 if a.quick else 3
    results = [
        run((1024, 1024), "uint16", a.frames or (100 if a.quick else 400), rep),
        run((3838, 3710), "uint8", a.frames or (20 if a.quick else 60), rep),
    ]
    path = write_result("bench_ingest", {"results": results})
    cols = ["shape", "dtype", "MB_per_frame", "bare_fps", "ingest_fps", "ingest_GBps", "ratio"]
    print(table(results, cols))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
