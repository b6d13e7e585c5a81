"""Cost of ZeroMQ CURVE on the output stream: PUB -> SUB throughput on loopback, plain vs CURVE.

Why: CURVE encrypts every byte in the sending and receiving I/O threads; at K2 size (57 MB float32,
28.5 MB float16 per frame) and 40 Hz that may exceed one core, which decides whether remote
consumers can take the full-rate stream encrypted. One sender, one receiver, zero-copy sends,
receive HWM large enough that nothing is dropped (the sender waits for the receiver's count).

Run: python -m benchmarks.bench_curve [--mb 28.5] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import zmq

from sbd_stream.invocation import invocation
from sbd_stream.security import CurveSettings, apply_curve, generate_keypair, stop_authenticator

RESULTS = Path(__file__).resolve().parent / "results"


def run(curve: bool, size: int, seconds: float, keys: Path | None) -> dict:
    ctx = zmq.Context()
    pub, sub = ctx.socket(zmq.PUB), ctx.socket(zmq.SUB)
    for s in (pub, sub):
        s.linger = 0
    pub.sndhwm = sub.rcvhwm = 4
    if curve and keys is not None:
        apply_curve(
            pub, CurveSettings(enabled=True, secret_key_file=keys / "server.key_secret"), True, "bench"
        )
        client = CurveSettings(
            enabled=True,
            secret_key_file=keys / "client.key_secret",
            server_public_key_file=keys / "server.key",
        )
        apply_curve(sub, client, False, "bench")
    pub.bind("tcp://127.0.0.1:*")
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(pub.getsockopt_string(zmq.LAST_ENDPOINT))
    payload = np.random.default_rng(0).integers(0, 255, size, dtype=np.uint8)
    got = {"n": 0}
    stop = threading.Event()

    def receive() -> None:
        while not stop.is_set():
            if sub.poll(100):
                sub.recv(copy=False)
                got["n"] += 1

    t = threading.Thread(target=receive, daemon=True)
    t.start()
    while got["n"] == 0:  # slow joiner: send until the first message arrives
        pub.send(payload, copy=False)
        time.sleep(0.05)
    n0, sent, t0 = got["n"], 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        if sent - (got["n"] - n0) < 3:  # keep at most 3 in flight: no drops, measures the slower side
            pub.send(payload, copy=False)
            sent += 1
        else:
            time.sleep(0.0005)
    while got["n"] - n0 < sent and time.perf_counter() - t0 < seconds + 10:
        time.sleep(0.001)
    dt = time.perf_counter() - t0
    stop.set()
    t.join()
    n = got["n"] - n0
    pub.close()
    sub.close()
    stop_authenticator(ctx)
    ctx.term()
    return {
        "curve": curve,
        "messages": n,
        "seconds": dt,
        "msg_per_s": n / dt,
        "gb_per_s": n * size / dt / 1e9,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=28.5, help="message size in MB (28.5 = K2 frame as float16)")
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    size = int(args.mb * 1e6)
    with tempfile.TemporaryDirectory() as d:
        keys = Path(d)
        generate_keypair(keys, "server")
        generate_keypair(keys, "client")
        rows = [run(False, size, args.seconds, None), run(True, size, args.seconds, keys)]
    out = {
        "benchmark": "bench_curve",
        "command": "python -m " + invocation("benchmarks.bench_curve"),
        "message_mb": args.mb,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "zmq": zmq.zmq_version()},
        "load_avg_1m": os.getloadavg()[0],
        "results": rows,
        "curve_slowdown": rows[0]["gb_per_s"] / max(rows[1]["gb_per_s"], 1e-12),
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "curve.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"{'mode':8s} {'msg/s':>8s} {'GB/s':>7s}")
    for r in rows:
        print(f"{'curve' if r['curve'] else 'plain':8s} {r['msg_per_s']:8.1f} {r['gb_per_s']:7.2f}")
    print(f"CURVE slowdown x{out['curve_slowdown']:.1f}  -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
