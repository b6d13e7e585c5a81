"""Ingest rate on loopback: the service's wire-v1 receiver against a bare pyzmq receive loop, same run.

A sender process publishes pre-encoded wire-format frames as fast as it can; the receiver is either a
bare ``recv_multipart(copy=False)`` loop or the service's receiver (``open_receiver``: decode,
validate, sequence accounting, hand-off). Ratio = receiver frames/s / bare frames/s.

    python -m benchmarks.bench_ingest [--quick]
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
from sbd_stream.sources.receiver import open_receiver


def _sender(endpoint: str, shape: tuple[int, int], dtype: str, n: int) -> None:
    ctx = zmq.Context()
    s = ctx.socket(zmq.XPUB)
    s.setsockopt(zmq.SNDHWM, 0)
    s.connect(endpoint)
    s.recv_multipart()  # wait for the subscription
    time.sleep(0.2)
    frame = np.random.default_rng(0).poisson(0.45, shape).astype(dtype)
    for seq in range(n):
        s.send_multipart(encode_frame(frame, "bench", seq, time.time()), copy=False)
    s.close(linger=-1)
    ctx.term()


def _bare(endpoint: str, n: int) -> tuple[int, float]:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.setsockopt(zmq.RCVTIMEO, 10000)
    sock.bind(endpoint)
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


def _ingest(endpoint: str, n: int, max_payload: int) -> tuple[int, float]:
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
            {"endpoint": endpoint, "mode": "bind", "rcvhwm": 0, "max_payload_bytes": max_payload}
        ),
        Metrics(),
        on_frame,
    )
    ing.start()
    done.wait(60)
    ing.stop()
    ing.join(5)
    t1 = state["t1"] or time.perf_counter()
    return int(state["n"]), t1 - state["t0"]


def run(shape: tuple[int, int], dtype: str, n: int, repeats: int) -> dict:
    nbytes = shape[0] * shape[1] * np.dtype(dtype).itemsize
    rows: dict[str, list[float]] = {"bare": [], "ingest": []}
    ctx = mp.get_context("spawn")
    for _ in range(repeats):
        for kind in ("bare", "ingest"):
            port = _free_port()
            ep = f"tcp://127.0.0.1:{port}"
            p = ctx.Process(target=_sender, args=(ep, shape, dtype, n))
            p.start()
            got, dt = _bare(ep, n) if kind == "bare" else _ingest(ep, n, max(nbytes, 1))
            p.join(60)
            rows[kind].append((got - 1) / dt if got > 1 else 0.0)
    bare, ing = float(np.median(rows["bare"])), float(np.median(rows["ingest"]))
    return {
        "shape": f"{shape[0]}x{shape[1]}",
        "dtype": dtype,
        "frames": n,
        "MB_per_frame": nbytes / 1e6,
        "bare_fps": bare,
        "ingest_fps": ing,
        "ingest_GBps": ing * nbytes / 1e9,
        "ratio": ing / bare if bare else float("nan"),
        "runs_bare": rows["bare"],
        "runs_ingest": rows["ingest"],
    }


def _free_port() -> int:
    s = zmq.Context.instance().socket(zmq.PUB)
    port = s.bind_to_random_port("tcp://127.0.0.1")
    s.close(0)
    return port


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    rep = 1 if a.quick else 3
    results = [
        run((1024, 1024), "uint16", 100 if a.quick else 400, rep),
        run((3838, 3710), "uint8", 20 if a.quick else 60, rep),
    ]
    path = write_result("bench_ingest", {"results": results})
    cols = ["shape", "dtype", "MB_per_frame", "bare_fps", "ingest_fps", "ingest_GBps", "ratio"]
    print(table(results, cols))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
