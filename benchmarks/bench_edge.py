"""The service edge's cost per frame (``sbd_stream/service/edge.py``): what every received frame pays
before it is queued, in the receiving thread, for the invalid- and hot-pixel rules.

Cases a real detector produces: a clean frame, one permanently hot pixel (the usual state of a counting
detector), a hot column, one pixel at the dtype maximum (a DECTRIS gap or defect), and a frame far above
the configured dose (nothing replaced). Frame sizes: the K2's 3838 x 3710 and 1024^2, uint16, Poisson
at the paper's 0.45 counts/px; the median of ``--repeats`` calls of ``clean_pixels``.

    python -m benchmarks.bench_edge [--repeats 25] [--sizes 3838x3710,1024x1024]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from functools import partial

import numpy as np

from benchmarks.common import table, write_result
from sbd_stream.service.edge import clean_pixels, hot_threshold

DOSE = 0.45  # counts per detector pixel in vacuum (the paper's detector)


def cases(shape: tuple[int, int]) -> dict[str, np.ndarray]:
    base = np.random.default_rng(0).poisson(DOSE, shape).astype(np.uint16)
    one_hot, column, gap = base.copy(), base.copy(), base.copy()
    one_hot[shape[0] // 3, shape[1] // 3] = 500
    column[:, shape[1] // 2] = 500
    gap[shape[0] // 2, shape[1] // 4] = np.iinfo(np.uint16).max
    bright = np.random.default_rng(1).poisson(10 * DOSE, shape).astype(np.uint16)
    bright[0, 0] = 500  # something at the threshold, in a frame at 10x the dose: left alone
    return {"clean": base, "one hot pixel": one_hot, "hot column": column, "dtype maximum": gap,
            "10x the dose": bright}  # fmt: skip


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (scipy's threshold, page faults of the first copy)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=25)
    ap.add_argument("--sizes", default="3838x3710,1024x1024", help="HxW,HxW,...")
    args = ap.parse_args(argv)
    hot = hot_threshold(DOSE)
    rows = []
    for size in args.sizes.split(","):
        h, w = (int(v) for v in size.lower().split("x"))
        for name, data in cases((h, w)).items():
            _, meta = clean_pixels(data, hot)
            ms = median_ms(partial(clean_pixels, data, hot), args.repeats)
            rows.append({"frame": f"{h}x{w}", "case": name, "ms": ms, "share_of_25ms": ms / 25.0,
                         "flags": ",".join(f"{k}={v}" for k, v in meta.items()) or "-"})  # fmt: skip
    print(table(rows, ["frame", "case", "ms", "share_of_25ms", "flags"]))
    path = write_result("bench_edge", {"dose_counts_per_px": DOSE, "repeats": args.repeats, "rows": rows})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
