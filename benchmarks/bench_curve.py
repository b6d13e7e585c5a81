"""Cost of ZeroMQ CURVE on the output stream: PUB -> SUB throughput on loopback, plain vs CURVE.

Why: CURVE encrypts every byte in the sending and receiving I/O threads; at K2 size (57 MB float32,
28.5 MB float16 per frame) and 40 Hz that may exceed one core, which decides whether remote
consumers can take the full-rate stream encrypted. One sender, one receiver, zero-copy sends, at most
3 messages in flight (the sender waits for the receiver's count). PUB may still drop small messages at
its HWM of 4: the time runs to the last receipt (never into a wait for dropped messages), and drops are
reported.

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

from benchmarks.common import out_path, stamped
from sbd_stream.invocation import invocation
from sbd_stream.security import CurveSettings, apply_curve, generate_keypair, stop_authenticator

QUIET_S = 1.0  # no receipt for this long: the messages still missing were dropped, not slow
FIRST_S = 5.0  # the same before the first timed receipt (a 28.5 MB CURVE message under load is slow)


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
    stamps: list[float] = []  # receipt times; list.append is atomic, the sender only reads
    stop = threading.Event()

    def receive() -> None:
        while not stop.is_set():
            if sub.poll(100):
                sub.recv(copy=False)
                stamps.append(time.perf_counter())

    t = threading.Thread(target=receive, daemon=True)
    t.start()
    while not stamps:  # slow joiner: send until the first message arrives
        pub.send(payload, copy=False)  # type: ignore[call-overload]  # numpy: ndarray is a Buffer from 3.12 on
        time.sleep(0.05)
    _wait_quiet(stamps, QUIET_S)  # late slow-joiner messages must not count as timed ones
    n0, sent, lost, t0 = len(stamps), 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        lost = min(lost, sent - (len(stamps) - n0))  # a message given up for lost may still arrive
        if sent - lost - (len(stamps) - n0) < 3:  # at most 3 in flight: measures the slower side
            pub.send(payload, copy=False)  # type: ignore[call-overload]  # numpy: ndarray is a Buffer from 3.12 on
            sent += 1
        elif _stalled(stamps, n0, t0, time.perf_counter()):
            lost = sent - (len(stamps) - n0)  # PUB dropped them at its HWM: stop waiting for them
        else:
            time.sleep(0.0005)
    while len(stamps) - n0 < sent and time.perf_counter() - max(stamps[-1], t0) < QUIET_S:
        time.sleep(0.001)
    stop.set()
    t.join()
    n = len(stamps) - n0
    # the clock stops at the last receipt: waiting for messages that never come is not throughput
    dt = (stamps[-1] if n else time.perf_counter()) - t0
    pub.close()
    sub.close()
    stop_authenticator(ctx)
    ctx.term()
    return {
        "curve": curve,
        "sent": sent,
        "messages": n,
        "dropped": sent - n,
        "seconds": dt,
        "msg_per_s": n / dt,
        "gb_per_s": n * size / dt / 1e9,
    }


def _stalled(stamps: list[float], n0: int, t0: float, now: float) -> bool:
    """No receipt for 10 mean receipt intervals (at least 0.2 s, above a shared core's scheduling hiccups;
    FIRST_S before the first) by ``now`` (``time.perf_counter()``, as ``stamps`` and ``t0``): what is
    still in flight was dropped. Without this the 3-in-flight window would wait for them until the run
    ends. ``now`` is the caller's so that a test judges fixed times, not its own machine's speed."""
    got = len(stamps) - n0
    if got == 0:
        return now - t0 > FIRST_S
    return now - stamps[-1] > max(0.2, 10 * (stamps[-1] - t0) / got)


def _wait_quiet(stamps: list[float], quiet_s: float) -> None:
    """Return once no message has arrived for ``quiet_s``."""
    while time.perf_counter() - stamps[-1] < quiet_s:
        time.sleep(0.01)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=28.5, help="message size in MB (28.5 = K2 frame as float16)")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--out", type=Path, default=None, help="results file (default: results/curve.json)")
    args = ap.parse_args(argv)
    size = int(args.mb * 1e6)
    with tempfile.TemporaryDirectory() as d:
        keys = Path(d)
        generate_keypair(keys, "server")
        generate_keypair(keys, "client")
        rows = [run(False, size, args.seconds, None), run(True, size, args.seconds, keys)]
    out = stamped(
        "bench_curve",
        {
            "command": "python -m " + invocation("benchmarks.bench_curve"),
            "message_mb": args.mb,
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "zmq": zmq.zmq_version()},
            "load_avg_1m": os.getloadavg()[0],
            "results": rows,
            "curve_slowdown": rows[0]["gb_per_s"] / max(rows[1]["gb_per_s"], 1e-12),
        },
    )
    path = out_path("curve.json", args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"{'mode':8s} {'msg/s':>8s} {'GB/s':>7s} {'sent':>6s} {'dropped':>8s}")
    for r in rows:
        mode = "curve" if r["curve"] else "plain"
        print(f"{mode:8s} {r['msg_per_s']:8.1f} {r['gb_per_s']:7.2f} {r['sent']:6d} {r['dropped']:8d}")
    print(f"CURVE slowdown x{out['curve_slowdown']:.1f}  -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
