"""Gaussian-column lattice images with ground truth: a stand-in for abTEM data in likelihood tests.

Not a TEM simulation: columns are Gaussian blobs of a given contrast on a flat specimen level, vacuum
is exactly 1.0. It gives the likelihood code frames with known columns (bright or dark, surface
vacancies and adatoms, columns near the edge) and files in the simulated-dataset format, so the study
and benchmark run end to end before real data and a trained engine exist.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.sim.dataset import ImageRecord, SimulatedDatasetWriter, TaskResult


def lattice_image(
    shape: tuple[int, int],
    pixel_size_A: float,
    rng: np.random.Generator,
    spacing_A: float = 2.8,
    column_sigma_A: float = 0.45,
    amplitude: float = 0.5,
    specimen_level: float = 0.9,
    particle_radius_A: float | None = None,
    vacancy_fraction: float = 0.05,
    adatoms: int = 3,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Clean image (vacuum = 1) and columns dict in the dataset's format.

    A disk-shaped "particle" of radius ``particle_radius_A`` (default: 40% of the short side) holds a
    square lattice; columns outside it are absent, some surface columns are removed (vacancies) and a few
    adatoms are placed just outside the surface. ``amplitude`` < 0 makes dark columns.
    """
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cy, cx = h / 2 + rng.uniform(-3, 3), w / 2 + rng.uniform(-3, 3)
    radius = (particle_radius_A / pixel_size_A) if particle_radius_A else 0.4 * min(h, w)
    step = spacing_A / pixel_size_A
    theta = rng.uniform(0, np.pi / 2)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    n = int(np.ceil(radius / step)) + 1
    ij = np.stack(np.meshgrid(np.arange(-n, n + 1), np.arange(-n, n + 1), indexing="ij"), -1).reshape(-1, 2)
    pts = ij @ rot.T * step + np.array([cy, cx])
    r = np.hypot(pts[:, 0] - cy, pts[:, 1] - cx)
    pts, r = pts[r <= radius], r[r <= radius]
    surface = r > radius - 1.2 * step
    drop = surface & (rng.random(len(pts)) < vacancy_fraction / max(surface.mean(), 1e-9))
    pts, surface = pts[~drop], surface[~drop]
    ang = rng.uniform(0, 2 * np.pi, adatoms)
    ad = np.stack([cy + (radius + 0.8 * step) * np.sin(ang), cx + (radius + 0.8 * step) * np.cos(ang)], 1)
    pts = np.concatenate([pts, ad])
    surface = np.concatenate([surface, np.ones(adatoms, bool)])

    inside = np.hypot(yy - cy, xx - cx) <= radius + 0.5 * step
    clean = np.where(inside, specimen_level, 1.0)
    s = column_sigma_A / pixel_size_A
    for py, px in pts:  # a few hundred blobs; clarity over speed in a test fixture
        y0, y1 = max(0, int(py - 5 * s)), min(h, int(py + 5 * s) + 2)
        x0, x1 = max(0, int(px - 5 * s)), min(w, int(px + 5 * s) + 2)
        g = np.exp(-((yy[y0:y1, x0:x1] - py) ** 2 + (xx[y0:y1, x0:x1] - px) ** 2) / (2 * s * s))
        clean[y0:y1, x0:x1] += amplitude * g
    clean = np.clip(clean, 0.05, None).astype(np.float32)
    cols = {
        "xy": pts.astype(np.float32),
        "is_surface": surface,
        "contrast": np.full(len(pts), 2 if amplitude > 0 else 0, dtype=np.int8),
        "species": np.zeros(len(pts), np.uint8),
        "n_atoms": np.full(len(pts), 5, np.int16),
    }
    return clean, cols


def write_lattice_dataset(
    path: str | Path,
    n_structures: int = 4,
    images_per_structure: int = 2,
    shape: tuple[int, int] = (192, 192),
    pixel_size_A: float = 0.15,
    dose: float = 0.45,
    seed: int = 0,
) -> Path:
    """An HDF5 file in the simulated-dataset format holding lattice images (alternating bright/dark)."""
    rng = np.random.default_rng(seed)
    with SimulatedDatasetWriter(path, shape, attrs={"generator": "likelihood_synthetic"}) as writer:
        for s in range(n_structures):
            sid = f"lattice{s:03d}"
            images = []
            for j in range(images_per_structure):
                amp = (0.5 if (s + j) % 2 == 0 else -0.35) * rng.uniform(0.8, 1.2)
                clean, cols = lattice_image(shape, pixel_size_A, rng, amplitude=amp)
                meta = dict(
                    structure_id=sid,
                    task_key=f"{sid}-t",
                    particle_class="synth",
                    defect_class="vac",
                    contrast_class=2 if amp > 0 else 0,
                    thickness_nm=0.0,
                    tilt_x_deg=0.0,
                    tilt_y_deg=0.0,
                    defocus_nm=float(j),
                    pixel_size_A=pixel_size_A,
                    dose=dose,
                )
                images.append(ImageRecord(clean=clean, meta=meta, columns=cols))
            writer.append_task(TaskResult(key=f"{sid}-t", structure={"structure_id": sid}, images=images))
    return Path(path)
