"""HRTEM image formation with abTEM: exit waves once, then every defocus from the stored waves.

Conventions (checked in tests/test_sim_imaging.py against abTEM 1.0.11):
- The paper's defocus D (0..20 nm) is C10 = +D (overfocus); abTEM's ``defocus`` argument is -C10.
- Cs = C30 and C5 = C50 in Angstrom; Cs = -13 um gives bright (NCSI-like) columns at small overfocus.
- ``focal_spread`` is abTEM's 1/e half-width of the defocus distribution (quasi-coherent envelope).
- ``angular_spread`` is the illumination convergence semi-angle (spatial-coherence envelope).
- Thermal vibration: frozen phonons with Debye-Waller B (sigma = sqrt(B / 8 pi^2) per direction).
- The 50 pm "vibration envelope" of the paper is an image-plane Gaussian blur of the intensity with that
  RMS per axis (an incoherent average over specimen/stage displacements), applied before binning.
- abTEM arrays are [x, y]; stored images are [row, col] with row 0 at the top of the cell (the vacuum
  side) and the support at the bottom, col along x. Pixel centres sit at integer coordinates.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from training.structures import Z_PERIOD, Z_PT, cluster_columns, surface_columns

MULTISLICE_RUNS = 0
"""Counts exit-wave computations in this process (tests use it to show defocus reuses exit waves)."""


class Optics(BaseModel):
    """Microscope settings of paper Appendix A.1."""

    energy_eV: float = 300e3
    cs_um: float = -13.0
    c5_mm: float = 5.0
    focal_spread_nm: float = Field(4.0, description="1/e half-width of the defocus spread")
    convergence_mrad: float = Field(0.2, description="illumination semi-angle")
    vibration_pm: float = Field(50.0, description="RMS image displacement per axis")


class Sampling(BaseModel):
    """Numerical settings of the multislice run."""

    gpts: int = Field(400, ge=16)
    slice_thickness_A: float = Field(Z_PERIOD / 2, gt=0, description="~1.9 A: two slices per repeat")
    n_phonons: int = Field(4, ge=1)
    b_factor_A2: float = Field(0.5, ge=0)
    image_px: int = Field(256, ge=8, description="detector pixels across the (square) cell")


def _configure_abtem(threads: int = 1) -> Any:
    import abtem

    abtem.config.set({"diagnostics.progress_bar": False, "fft": "fftw", "fftw.threads": threads})
    return abtem


def exit_waves(
    atoms: Any,
    exit_thicknesses_A: list[float],
    sampling: Sampling,
    tilt_mrad: tuple[float, float],
    seed: int,
    energy_eV: float = 300e3,
) -> Any:
    """Frozen-phonon exit waves at each requested thickness (one multislice pass with exit planes)."""
    global MULTISLICE_RUNS
    import dask

    abtem = _configure_abtem()
    from abtem.atoms import B_to_sigma

    n_slices = max(1, round(atoms.cell[2, 2] / sampling.slice_thickness_A))
    dz = atoms.cell[2, 2] / n_slices
    planes = tuple(sorted({max(0, round(t / dz) - 1) for t in exit_thicknesses_A}))
    sigma = float(B_to_sigma(sampling.b_factor_A2))
    phonons = abtem.FrozenPhonons(atoms, num_configs=sampling.n_phonons, sigmas=sigma, seed=seed)
    potential = abtem.Potential(
        phonons,
        gpts=(sampling.gpts, sampling.gpts),
        slice_thickness=dz,
        projection="infinite",
        exit_planes=planes,
    )
    wave = abtem.PlaneWave(energy=energy_eV, tilt=tilt_mrad)
    with dask.config.set(scheduler="synchronous"):
        waves = wave.multislice(potential).compute()
    MULTISLICE_RUNS += 1
    return waves


def exit_thicknesses(waves: Any) -> list[float]:
    """Thickness (A) of each exit plane of a computed wave stack."""
    for axis in waves.ensemble_axes_metadata:
        if getattr(axis, "label", None) == "z":
            return [float(v) for v in axis.values]
    return []


def defocus_images(waves: Any, defocus_nm: float, optics: Optics) -> np.ndarray:
    """Phonon-averaged intensity [thickness, x, y] at one defocus (C10 = +defocus_nm), from exit waves."""
    import dask

    abtem = _configure_abtem()
    ctf = abtem.CTF(
        energy=optics.energy_eV,
        focal_spread=optics.focal_spread_nm * 10,
        angular_spread=optics.convergence_mrad,
        aberration_coefficients={
            "C10": defocus_nm * 10,
            "C30": optics.cs_um * 1e4,
            "C50": optics.c5_mm * 1e7,
        },
    )
    with dask.config.set(scheduler="synchronous"):
        images = waves.apply_ctf(ctf).intensity().reduce_ensemble().compute()
    arr = np.asarray(images.array, dtype=np.float32)
    return arr.reshape(-1, *arr.shape[-2:])


def vibration_blur(intensity: np.ndarray, extent_A: float, sigma_A: float) -> np.ndarray:
    """Gaussian blur of the last two (periodic) axes, done in Fourier space."""
    if sigma_A <= 0:
        return intensity
    n = intensity.shape[-1]
    k = np.fft.fftfreq(n, d=extent_A / n)
    kk = k[:, None] ** 2 + k[None, :] ** 2
    env = np.exp(-2 * np.pi**2 * sigma_A**2 * kk)
    return np.fft.ifft2(np.fft.fft2(intensity) * env).real.astype(np.float32)


def _bin_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Area weights of periodic input samples (centred at i*d_in) in output pixels (centred at j*d_out)."""
    d_in, d_out = 1.0 / n_in, 1.0 / n_out
    lo_in = (np.arange(n_in) - 0.5) * d_in
    lo_out = (np.arange(n_out) - 0.5) * d_out
    w = np.zeros((n_out, n_in))
    for shift in (-1.0, 0.0, 1.0):
        a = np.maximum(lo_out[:, None], lo_in[None, :] + shift)
        b = np.minimum(lo_out[:, None] + d_out, lo_in[None, :] + shift + d_in)
        w += np.clip(b - a, 0, None)
    return w / d_out


def to_detector(intensity_xy: np.ndarray, n_px: int) -> np.ndarray:
    """Bin [..., x, y] simulation samples to n_px detector pixels and turn into [..., row, col] images."""
    m = _bin_matrix(intensity_xy.shape[-1], n_px)
    binned = np.einsum("ri,...ij,cj->...rc", m, intensity_xy, m, optimize=True)  # [..., x, y]
    img = np.swapaxes(binned, -1, -2)  # [..., y, x]
    return np.ascontiguousarray(img[..., ::-1, :]).astype(np.float32)  # row 0 = top of the cell


def column_truth(
    positions: np.ndarray,
    numbers: np.ndarray,
    thickness_A: float,
    tilt_mrad: tuple[float, float],
    extent_A: float,
    n_px: int,
    y_interface_A: float,
) -> dict[str, np.ndarray]:
    """Projected columns of the atoms the wave has crossed, in detector [row, col] pixels.

    abTEM tilts by shifting the wave tan(tilt) * dz per slice, so an atom at depth z appears displaced
    by (thickness - z) * tan(tilt) at the exit plane; a column sits at the mean of its atoms.
    """
    inside = positions[:, 2] < thickness_A
    pos, num = positions[inside], numbers[inside]
    labels = cluster_columns(pos[:, :2])
    k = labels.max() + 1
    counts = np.bincount(labels, minlength=k)
    shift = (thickness_A - pos[:, 2])[:, None] * np.tan(np.asarray(tilt_mrad) / 1e3)[None, :]
    xy = np.stack([np.bincount(labels, (pos[:, i] + shift[:, i]), k) / counts for i in range(2)], 1)
    xy0 = np.stack([np.bincount(labels, pos[:, i], k) / counts for i in range(2)], 1)
    species = np.zeros(k, dtype=np.uint8)
    np.maximum.at(species, labels, num.astype(np.uint8))
    is_surface = np.zeros(k, dtype=bool)
    pt = species == Z_PT
    if pt.any():
        is_surface[pt] = surface_columns(xy0[pt], y_interface_A)
    pixel = extent_A / n_px
    col = np.mod(xy[:, 0] / pixel, n_px)
    row = np.mod(n_px - 1 - xy[:, 1] / pixel, n_px)
    return {
        "xy": np.stack([row, col], 1).astype(np.float32),
        "is_surface": is_surface,
        "species": species,
        "n_atoms": counts.astype(np.int16),
    }


CONTRAST_THRESHOLD = 0.04
"""|column - ring| below this (vacuum = 1) is intermediate contrast."""
RING_RADIUS_A = 1.2
"""Background ring radius: half the shortest projected Pt-Pt column distance (2.40 A)."""


def contrast_classes(image: np.ndarray, xy: np.ndarray, pixel_A: float) -> np.ndarray:
    """0 black / 1 intermediate / 2 white: column value minus the mean on a ring around it."""
    from scipy.ndimage import map_coordinates

    if len(xy) == 0:
        return np.zeros(0, dtype=np.int8)
    centre = map_coordinates(image, xy.T, order=1, mode="grid-wrap")
    ang = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    r = RING_RADIUS_A / pixel_A
    ring_pts = xy[:, None, :] + r * np.stack([np.sin(ang), np.cos(ang)], 1)[None]
    ring = map_coordinates(image, ring_pts.reshape(-1, 2).T, order=1, mode="grid-wrap").reshape(len(xy), -1)
    delta = centre - ring.mean(1)
    out = np.ones(len(xy), dtype=np.int8)
    out[delta < -CONTRAST_THRESHOLD] = 0
    out[delta > CONTRAST_THRESHOLD] = 2
    return out


def image_contrast_class(contrast: np.ndarray, species: np.ndarray) -> int:
    """Image-level class (Sec. 5.1): the majority class of its Pt columns; -1 without Pt."""
    c = contrast[species == Z_PT]
    if len(c) == 0:
        return -1
    counts = np.bincount(c, minlength=3)
    return int(np.argmax(counts))
