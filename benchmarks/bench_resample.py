"""Area-weighted resampling (a detector pixel with no integer bin) against the integer bin it replaces.

Per frame on the CPU (torch's own threads): the sum down to the working pixel (``bin_counts``) and the
interpolation back (``unbin``, bilinear as the CPU stages run and bicubic as offline / GPU) for the
integer k = 4 (0.060 A to 0.24 A) and the fractional r = 1.2, 5/3, 2.4 (0.20, 0.144, 0.10 A), on
1024^2 and K2-size (3838 x 3710) uint16 frames. Also the price of splitting pixels: variance / mean
of the working-pixel counts on Poisson vacuum at 0.45 counts per detector pixel (1 for an exact Poisson
sum; see ``compute/resample.py``). A fractional factor is also timed by the per-overlap gathers that
served it before session 32 (``rebin_by_gathers``, still the path of a factor with no short period), in
the same run; and with every result kept (``down_held_ms``): a released result's memory is reused by the
next call (session 34), a held one never, so this is what a caller keeping them all pays in fresh pages
(over glibc's 32 MiB mmap threshold: a K2 frame at r = 1.2). Times are medians: the 2 cores are shared,
and the minimum hid how often a frame is late.

    python -m benchmarks.bench_resample [--repeats 5] [--sizes 1024,k2]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch

from benchmarks.common import table, write_result
from sbd_stream.compute.binning import bin_counts, is_fractional, unbin
from sbd_stream.compute.resample import rebin_by_gathers

SIZES = {"1024": (1024, 1024), "k2": (3838, 3710)}
FACTORS: dict[str, int | float] = {
    "bin 4 (0.060 A)": 4,
    "r 1.2 (0.20 A)": 1.2,
    "r 1.67 (0.144 A)": 0.24 / 0.144,
    "r 2.4 (0.10 A)": 2.4,
}


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: the per-side plans are cached per (side, r), torch sizes its thread pool
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


def median_held_ms(fn: Callable[[], object], repeats: int) -> float:
    """``median_ms`` with every result held until the end: each call gets fresh memory."""
    held: list[object] = []
    ms = median_ms(lambda: held.append(fn()), repeats)
    held.clear()
    return ms


def speed(sizes: list[str], repeats: int) -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    for name in sizes:
        h, w = SIZES[name]
        x = torch.from_numpy(rng.poisson(0.45, (1, h, w)).astype(np.float32))
        for label, k in FACTORS.items():
            rows.append({"frame": name, "factor": label, **timings(x, k, repeats)})
    return rows


def timings(x: torch.Tensor, k: int | float, repeats: int) -> dict[str, object]:
    """Down (``bin_counts``) and back (``unbin``, both modes) for one frame and factor."""
    shape = (x.shape[1], x.shape[2])
    b = bin_counts(x, k)
    gathers = median_ms(lambda: rebin_by_gathers(x, float(k)), repeats) if is_fractional(k) else None
    return {
        "working_px": f"{b.shape[1]}x{b.shape[2]}",
        "down_ms": median_ms(lambda: bin_counts(x, k), repeats),
        "down_gathers_ms": gathers,
        "down_held_ms": median_held_ms(lambda: bin_counts(x, k), repeats),
        "up_bilinear_ms": median_ms(lambda: unbin(b, k, shape, "bilinear"), repeats),
        "up_bicubic_ms": median_ms(lambda: unbin(b, k, shape, "bicubic"), repeats),
    }


def variance(counts_per_px: float = 0.45) -> list[dict]:
    x = torch.from_numpy(np.random.default_rng(1).poisson(counts_per_px, (8, 720, 720)).astype(np.float32))
    rows = []
    for label, k in FACTORS.items():
        b = bin_counts(x, k)[:, 1:-1, 1:-1]  # away from the reflected last row / column
        mean, var = float(b.mean()), float(b.var())
        rows.append(
            {
                "factor": label,
                "mean": mean,
                "expected_mean": counts_per_px * k * k,
                "var_over_mean": var / mean,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sizes", default="1024,k2", help="frame sizes: 1024, k2 (3838x3710)")
    a = ap.parse_args(argv)
    sp = speed(a.sizes.split(","), a.repeats)
    var = variance()
    path = write_result(
        "bench_resample",
        {"threads": torch.get_num_threads(), "repeats": a.repeats, "speed": sp, "variance": var},
    )
    columns = ["frame", "factor", "working_px", "down_ms", "down_held_ms", "down_gathers_ms"]
    print(table(sp, [*columns, "up_bilinear_ms", "up_bicubic_ms"]))
    print()
    print("vacuum at 0.45 counts/px: variance / mean of the working-pixel counts (Poisson: 1)")
    print(table(var, ["factor", "mean", "expected_mean", "var_over_mean"]))
    print(f"-> {path}")


if __name__ == "__main__":
    main()
