"""A small bundle of simulated clean test-split images for the demo and the emulator.

The shipped demo must show the engine on the kind of image it was trained for, on a fresh clone where
no simulated dataset exists yet; a few held-out clean images (no noise: the emulator draws it) are
small enough to commit.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from sbd_stream.sources.stacks import atomic_h5
from sbd_stream.stop_pending import check_stop
from training.sim.dataset import SimulatedDataset

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "sbd_stream" / "samples" / "pt_ceo2_test.h5"


def write_demo_samples(data: Path, out: Path = DEFAULT_OUT, n: int = 12, seed: int = 0) -> Path:
    """Copy ``n`` test-split clean images (spread over structures and defocus) with their metadata."""
    with SimulatedDataset(data) as ds:
        test = ds.split()["test"]
        if len(test) == 0:
            raise ValueError(f"{data} has no test split images")
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(test, size=min(n, len(test)), replace=False))
        clean = []
        for i in pick:
            check_stop()  # a Ctrl-C Python swallowed (h5py drops objects) ends it here, before the write
            clean.append(ds.clean(int(i)))
        images = np.stack(clean)
        metas = [ds.meta(int(i)) for i in pick]
        attrs = {k: v for k, v in ds.attrs.items() if isinstance(v, str | int | float | np.number)}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_h5(out) as f:  # whole or not at all: the bundled file is the tests' and the demo's
        f.create_dataset("images", data=images, chunks=(1, *images.shape[1:]), compression="gzip")
        f["committed"] = np.array([len(images), 0, 0], np.int64)
        for key in ("structure_id", "defocus_nm", "thickness_nm", "particle_class", "defect_class"):
            vals = [m[key] for m in metas]
            f[f"meta/{key}"] = np.array(vals, dtype=h5py.string_dtype() if isinstance(vals[0], str) else None)
        f.attrs.update(attrs)
        f.attrs["source"] = f"{data.name}: test split (held out from training), indices {pick.tolist()}"
    return out


QUALITY_OUT = Path(__file__).resolve().parents[2] / "tests" / "data" / "paper_test_frames.h5"


def write_quality_frames(data: Path, out: Path = QUALITY_OUT, n: int = 6, seed: int = 1) -> Path:
    """Test-split clean images of the paper world WITH their atomic-model columns, for the quality test.

    The test scores the shipped engine per region (vacuum / support / particle from the columns), so the
    bundle carries what ``training.evaluate.regions.region_map`` needs; the images stay at the working pixel
    (0.24 A, ~0.2 MB each) and the test resamples them to the detector's 0.060 A.
    """
    with SimulatedDataset(data) as ds:
        test = ds.split()["test"]
        if len(test) == 0:
            raise ValueError(f"{data} has no test split images")
        sids = ds.structure_ids()[test]
        # spread over structures first, then over defocus within them
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(test))
        pick, seen = [], set()
        for j in order:
            if sids[j] not in seen:
                pick.append(int(test[j]))
                seen.add(sids[j])
            if len(pick) == n:
                break
        pick = sorted(pick)
        images = np.stack([ds.clean(i) for i in pick])
        cols = [ds.columns(i) for i in pick]
        metas = [ds.meta(i) for i in pick]
        pixel = float(ds.attrs.get("pixel_size_A", metas[0]["pixel_size_A"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_h5(out) as f:  # whole or not at all: the bundled file is the tests' and the demo's
        f.create_dataset("images", data=images, compression="gzip")
        counts = [len(c["xy"]) for c in cols]
        f["columns/col_start"] = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        f["columns/col_count"] = np.asarray(counts, np.int64)
        for key, dt in (("xy", np.float32), ("species", np.uint8), ("is_surface", bool)):
            f[f"columns/{key}"] = np.concatenate([np.asarray(c[key], dt) for c in cols])
        for key in ("structure_id", "defocus_nm", "thickness_nm", "tilt_x_deg", "tilt_y_deg"):
            vals = [m[key] for m in metas]
            f[f"meta/{key}"] = np.array(vals, dtype=h5py.string_dtype() if isinstance(vals[0], str) else None)
        f.attrs["pixel_size_A"] = pixel
        f.attrs["source"] = f"{data.name}: test split (held out from training), indices {pick}"
    return out


def read_quality_frames(path: Path = QUALITY_OUT) -> tuple[np.ndarray, list[dict[str, np.ndarray]], float]:
    """(images, per-image columns, pixel size) of a bundle written by :func:`write_quality_frames`."""
    with h5py.File(path, "r") as f:
        images = f["images"][()]
        start, count = f["columns/col_start"][()], f["columns/col_count"][()]
        cols = [
            {k: f[f"columns/{k}"][s : s + c] for k in ("xy", "species", "is_surface")}
            for s, c in zip(start, count, strict=True)
        ]
        return images, cols, float(f.attrs["pixel_size_A"])


def main(argv: list[str] | None = None) -> None:
    """``python -m training.samples DATA [OUT]``: regenerate the quality bundle (default ``QUALITY_OUT``).

    argparse, not ``sys.argv`` by hand: ``--help`` was read as the data file, and no argument was an
    IndexError traceback (CLI audit h30)."""
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m training.samples", description="Regenerate the quality test's bundled frames."
    )
    ap.add_argument("data", type=Path, help="a simulated world (HDF5) with its test split beside it")
    ap.add_argument("out", type=Path, nargs="?", default=QUALITY_OUT, help=f"output (default {QUALITY_OUT})")
    a = ap.parse_args(argv)
    if not a.data.is_file():
        ap.error(f"{a.data}: no such file (make it with `sbd-train simulate`)")
    print(write_quality_frames(a.data, a.out))


if __name__ == "__main__":
    main()
