"""A small synthetic stand-in for the simulated set: Gaussian-blob "columns" on a lattice, same format.

Tests and smoke runs of training and evaluation need a file with the simulated set's layout (several
structures, column ground truth, contrast classes) in seconds, without abTEM. Images are *not* physical:
bright or dark Gaussian columns on a vacuum of 1, a "particle" of surface and bulk columns on a "support".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.sim.dataset import ImageRecord, SimulatedDatasetWriter, TaskResult

Z_PT, Z_CE = 78, 58


def _image(
    rng: np.random.Generator, size: int, spacing: float, white: bool, sigma: float
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rows, cols, surf, species = [], [], [], []
    base = size * 0.65
    for r in np.arange(base, size - spacing / 2, spacing):  # support rows
        for c in np.arange(spacing / 2, size, spacing):
            rows.append(r)
            cols.append(c)
            surf.append(False)
            species.append(Z_CE)
    n_layers = int(rng.integers(3, 6))
    width = int(rng.integers(4, 8))
    c0 = size / 2 - width * spacing / 2 + rng.uniform(-spacing, spacing)
    for k in range(n_layers):
        n = width - k
        for j in range(n):
            rows.append(base - (k + 1) * spacing)
            cols.append(c0 + (j + k / 2) * spacing)
            surf.append(k == n_layers - 1 or j in (0, n - 1))
            species.append(Z_PT)
    xy = np.stack([rows, cols], 1).astype(np.float32) + rng.normal(0, 0.3, (len(rows), 2)).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = np.ones((size, size), np.float32)
    sign = 1.0 if white else -1.0
    for (r, c), z in zip(xy, species, strict=True):
        amp = (0.5 if z == Z_PT else 0.3) * sign
        img += amp * np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * sigma**2))
    contrast = np.full(len(xy), 2 if white else 0, np.int8)
    cols_out = {
        "xy": xy,
        "is_surface": np.asarray(surf, bool),
        "contrast": contrast,
        "species": np.asarray(species, np.uint8),
        "n_atoms": np.full(len(xy), 5, np.int16),
    }
    return np.clip(img, 0.05, None), cols_out


def write_synthetic(
    path: Path,
    n_structures: int = 6,
    per_structure: int = 4,
    size: int = 64,
    seed: int = 0,
    dose: float = 0.45,
) -> Path:
    """Write a synthetic set with the simulated set's layout; returns ``path``."""
    pixel = 0.155
    with SimulatedDatasetWriter(path, (size, size), {"preset": "synthetic", "dose": dose}) as w:
        for s in range(n_structures):
            rng = np.random.default_rng([seed, s])
            task = TaskResult(key=f"s{s}", structure={"structure_id": f"syn{s:03d}"})
            for k in range(per_structure):
                white = k % 2 == 0
                img, cols = _image(rng, size, spacing=2.4 / pixel * 0.6, white=white, sigma=2.0)
                meta = {
                    "structure_id": f"syn{s:03d}",
                    "task_key": f"s{s}",
                    "particle_class": "PtNp1",
                    "defect_class": "D0",
                    "contrast_class": 2 if white else 0,
                    "thickness_nm": 3.0,
                    "tilt_x_deg": 0.0,
                    "tilt_y_deg": 0.0,
                    "defocus_nm": float(k),
                    "pixel_size_A": pixel,
                    "dose": dose,
                }
                task.images.append(ImageRecord(clean=img, meta=meta, columns=cols))
            w.append_task(task)
    return path
