"""A small bundle of simulated clean test-split images for the demo and the emulator.

The shipped demo must show the engine on the kind of image it was trained for, on a fresh clone where
no simulated dataset exists yet; a few held-out clean images (no noise: the emulator draws it) are
small enough to commit.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from training.dataset import SimulatedDataset

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "sbd_stream" / "samples" / "pt_ceo2_test.h5"


def write_demo_samples(data: Path, out: Path = DEFAULT_OUT, n: int = 12, seed: int = 0) -> Path:
    """Copy ``n`` test-split clean images (spread over structures and defocus) with their metadata."""
    with SimulatedDataset(data) as ds:
        test = ds.split()["test"]
        if len(test) == 0:
            raise ValueError(f"{data} has no test split images")
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(test, size=min(n, len(test)), replace=False))
        images = np.stack([ds.clean(int(i)) for i in pick])
        metas = [ds.meta(int(i)) for i in pick]
        attrs = {k: v for k, v in ds.attrs.items() if isinstance(v, str | int | float | np.number)}
    out.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(out, "w") as f:
        f.create_dataset("images", data=images, chunks=(1, *images.shape[1:]), compression="gzip")
        f["committed"] = np.array([len(images), 0, 0], np.int64)
        for key in ("structure_id", "defocus_nm", "thickness_nm", "particle_class", "defect_class"):
            vals = [m[key] for m in metas]
            f[f"meta/{key}"] = np.array(vals, dtype=h5py.string_dtype() if isinstance(vals[0], str) else None)
        f.attrs.update(attrs)
        f.attrs["source"] = f"{data.name}: test split (held out from training), indices {pick.tolist()}"
    return out
