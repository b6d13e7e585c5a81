"""HRTEM image formation with abTEM: exit waves once, then every defocus from the stored waves.

Conventions (checked in tests/integration/test_sim_imaging.py against abTEM 1.0.11):
- The paper's defocus D (0..20 nm) is C10 = +D (overfocus); abTEM's ``defocus`` argument is -C10.
- Cs = C30 and C5 = C50 in Angstrom; Cs = -13 um gives bright (NCSI-like) columns at small overfocus.
- Temporal coherence, ``Optics.focal_mode``: ``explicit`` (default; what the paper's Dr. Probe does)
  averages coherent images over focus C10 + delta with weights exp(-(delta/fs)^2), fs = 4 nm the 1/e
  half-width, by Gauss-Hermite quadrature (``focal_points`` nodes); ``envelope`` is abTEM's
  quasi-coherent focal-spread envelope (the ``mini`` preset's, kept so that set stays reproducible).
- ``angular_spread`` is the illumination convergence semi-angle (spatial-coherence envelope), always
  quasi-coherent (evaluated at each focal point in explicit mode).
- Thermal vibration: frozen phonons with Debye-Waller B (sigma = sqrt(B / 8 pi^2) per direction).
- The 50 pm "vibration envelope" of the paper is an image-plane Gaussian blur of the intensity with that
  RMS per axis (an incoherent average over specimen/stage displacements), applied before binning.
- abTEM arrays are [x, y]; stored images are [row, col] with row 0 at the top of the cell (the vacuum
  side) and the support at the bottom, col along x. Pixel centres sit at integer coordinates.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from training.sim.structures import Z_PERIOD, Z_PT, cluster_columns, surface_columns

MULTISLICE_RUNS = 0
"""Counts exit-wave computations in this process (tests use it to show defocus reuses exit waves)."""


class Optics(BaseModel):
    """Microscope settings of paper Appendix A.1."""

    energy_eV: float = 300e3
    cs_um: float = -13.0
    c5_mm: float = 5.0
    focal_spread_nm: float = Field(4.0, description="1/e half-width of the defocus spread")
    focal_mode: Literal["explicit", "envelope"] = Field(
        "explicit", description="explicit focal averaging (Dr. Probe) or abTEM's quasi-coherent envelope"
    )
    focal_points: int = Field(
        8, ge=1, description="Gauss-Hermite nodes of the explicit focal average (docs/simulation.md)"
    )
    convergence_mrad: float = Field(0.2, description="illumination semi-angle")
    vibration_pm: float = Field(50.0, description="RMS image displacement per axis")
    focal_spread_range_nm: tuple[float, float] | None = Field(
        None, description="draw each image's focal spread uniformly from this range (else focal_spread_nm)"
    )
    vibration_range_pm: tuple[float, float] | None = Field(
        None, description="draw each image's vibration uniformly from this range (else vibration_pm)"
    )

    def draw(self, rng: np.random.Generator) -> Optics:
        """One image's optics: the ranged settings drawn, the rest as set. Microscopes (and users who
        simulate them) differ in focal spread and stability; an engine that saw one value paints its look
        onto frames made with another (benchmarks/user_abtem.py --focal-spread / --vibration-pm)."""
        update: dict[str, float] = {}
        if self.focal_spread_range_nm is not None:
            update["focal_spread_nm"] = float(rng.uniform(*self.focal_spread_range_nm))
        if self.vibration_range_pm is not None:
            update["vibration_pm"] = float(rng.uniform(*self.vibration_range_pm))
        return self.model_copy(update=update) if update else self


class View(BaseModel):
    """A square detector window of ``image_px`` pixels of ``pixel_A`` inside the periodic cell.

    The window spans [x_lo, x_lo + image_px * pixel_A] in x (centred in the cell) and
    [y_lo, y_lo + image_px * pixel_A] in y (``y_lo`` = 0: the support's bottom edge; only vacuum at the
    top is cut). Column c is centred at x = x_lo + (c + 1/2) pixel_A, row r at
    y = y_lo + (image_px - r - 1/2) pixel_A (row 0 at the top). Two views with the same window size
    (e.g. 256 x 0.24 A and 1024 x 0.060 A) cover the same area, and binning the finer one k x k gives
    the coarser one exactly (both integrate the same band-limited intensity over their pixels).
    """

    image_px: int = Field(ge=8)
    pixel_A: float = Field(gt=0)

    def width_A(self) -> float:
        return self.image_px * self.pixel_A

    def origin_A(self, extent_A: float) -> tuple[float, float]:
        """(x_lo, y_lo) of the window in a cell of side ``extent_A``."""
        if self.width_A() > extent_A + 1e-6:
            raise ValueError(f"view {self.width_A():.2f} A is wider than the {extent_A:.2f} A cell")
        return (extent_A - self.width_A()) / 2, 0.0


class Sampling(BaseModel):
    """Numerical settings of the multislice run."""

    gpts: int = Field(400, ge=16)
    slice_thickness_A: float = Field(Z_PERIOD / 2, gt=0, description="~1.9 A: two slices per repeat")
    n_phonons: int = Field(4, ge=1)
    b_factor_A2: float = Field(0.5, ge=0)
    image_px: int = Field(256, ge=8, description="detector pixels across the (square) cell")
    pixel_A: float | None = Field(
        None,
        gt=0,
        description="None: image_px pixels span the whole cell (to_detector); else a View of image_px "
        "pixels of this size (render_view: band-limited resampling with pixel integration)",
    )

    def view(self) -> View | None:
        return None if self.pixel_A is None else View(image_px=self.image_px, pixel_A=self.pixel_A)


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


def focal_nodes(optics: Optics) -> tuple[np.ndarray, np.ndarray]:
    """Focus offsets (A) and weights (sum 1) of the explicit focal average: Gauss-Hermite quadrature of
    the weight exp(-(delta/fs)^2), fs the 1/e half-width; a single node at 0 for fs = 0."""
    fs = optics.focal_spread_nm * 10
    if fs <= 0 or optics.focal_points == 1:
        return np.zeros(1), np.ones(1)
    x, w = np.polynomial.hermite.hermgauss(optics.focal_points)
    return fs * x, w / w.sum()


class CoherentImager:
    """Explicit focal averaging from stored exit waves: FFT once, then per defocus and focal node a CTF
    (aberrations x quasi-coherent spatial envelope, evaluated by abTEM at C10 + delta) and |.|^2.

    ``images(defocus_nm)`` returns the phonon- and focus-averaged intensity [thickness, x, y].
    """

    def __init__(self, waves: Any, optics: Optics) -> None:
        from scipy import fft

        self.optics = optics
        self._waves = waves
        arr = np.asarray(waves.array)
        axes = waves.ensemble_axes_metadata
        z_axis = next((i for i, a in enumerate(axes) if getattr(a, "label", None) == "z"), None)
        arr = arr[None] if z_axis is None else np.moveaxis(arr, z_axis, 0)
        arr = arr.reshape(arr.shape[0], -1, *arr.shape[-2:])  # [thickness, configs, x, y]
        self.n_configs = arr.shape[1]
        self._spectrum = fft.fft2(arr.astype(np.complex64), workers=1)
        self.focus_A, self.weights = focal_nodes(optics)

    def kernel(self, c10_A: float) -> np.ndarray:
        """abTEM's coherent CTF (no focal spread) with the spatial-coherence envelope, on the wave grid."""
        abtem = _configure_abtem()
        ctf = abtem.CTF(
            energy=self.optics.energy_eV,
            angular_spread=self.optics.convergence_mrad,
            aberration_coefficients={
                "C10": c10_A,
                "C30": self.optics.cs_um * 1e4,
                "C50": self.optics.c5_mm * 1e7,
            },
        )
        return np.asarray(ctf._evaluate_kernel(self._waves), dtype=np.complex64)

    def images(self, defocus_nm: float) -> np.ndarray:
        from scipy import fft

        out = np.zeros(self._spectrum.shape[:1] + self._spectrum.shape[2:], dtype=np.float64)
        for delta, w in zip(self.focus_A, self.weights, strict=True):
            psi = fft.ifft2(self._spectrum * self.kernel(defocus_nm * 10 + float(delta)), workers=1)
            out += (w / self.n_configs) * (psi.real**2 + psi.imag**2).sum(1)
        return out.astype(np.float32)


def defocus_images(waves: Any, defocus_nm: float, optics: Optics) -> np.ndarray:
    """Phonon-averaged intensity [thickness, x, y] at one defocus (C10 = +defocus_nm), from exit waves.

    ``optics.focal_mode`` chooses explicit focal averaging (``CoherentImager``) or abTEM's envelope.
    """
    if optics.focal_mode == "explicit":
        return CoherentImager(waves, optics).images(defocus_nm)
    return envelope_images(waves, defocus_nm, optics)


def envelope_images(waves: Any, defocus_nm: float, optics: Optics) -> np.ndarray:
    """abTEM's quasi-coherent imaging: focal spread and convergence as damping envelopes of the CTF."""
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


def render_view(intensity_xy: np.ndarray, extent_A: float, view: View, vibration_A: float) -> np.ndarray:
    """[..., x, y] periodic simulation samples -> [..., row, col] detector images of ``view``.

    In Fourier space: the vibration envelope exp(-2 pi^2 s^2 k^2), then the pixel's box integration
    sinc(k p) per axis; the band-limited result is evaluated at the pixel centres with a truncated
    separable Fourier series (frequencies where the vibration envelope is below 1e-7 are dropped, so
    any pixel size and window position is exact and cheap).
    """
    from scipy import fft

    n_in = intensity_xy.shape[-1]
    k = np.fft.fftfreq(n_in, d=extent_A / n_in)
    keep = np.ones(n_in, dtype=bool)
    if vibration_A > 0:
        keep = np.abs(k) <= np.sqrt(np.log(1e7) / (2 * np.pi**2 * vibration_A**2))
    kk = k[keep]
    spec = fft.fft2(intensity_xy.astype(np.float64), workers=1)[..., keep, :][..., keep] / n_in**2
    env = np.exp(-2 * np.pi**2 * vibration_A**2 * kk**2) * np.sinc(kk * view.pixel_A)
    spec = spec * env[:, None] * env[None, :]
    x_lo, y_lo = view.origin_A(extent_A)
    centres = (np.arange(view.image_px) + 0.5) * view.pixel_A
    ex = np.exp(2j * np.pi * (x_lo + centres)[:, None] * kk[None, :])  # [col, kx]
    ey = np.exp(2j * np.pi * (y_lo + centres)[:, None] * kk[None, :])  # [i (y ascending), ky]
    vals = np.einsum("ca,...ab,ib->...ic", ex, spec, ey, optimize=True).real  # [..., y asc, x]
    return np.ascontiguousarray(vals[..., ::-1, :]).astype(np.float32)  # row 0 = top of the window


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
    view: View | None = None,
) -> dict[str, np.ndarray]:
    """Projected columns of the atoms the wave has crossed, in detector [row, col] pixels.

    abTEM tilts by shifting the wave tan(tilt) * dz per slice, so an atom at depth z appears displaced
    by (thickness - z) * tan(tilt) at the exit plane; a column sits at the mean of its atoms. With a
    ``view``, positions are in its pixels and columns whose centre lies outside the window are dropped.
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
    if view is None:
        pixel = extent_A / n_px
        col = np.mod(xy[:, 0] / pixel, n_px)
        row = np.mod(n_px - 1 - xy[:, 1] / pixel, n_px)
        inside_view = np.ones(k, dtype=bool)
    else:
        x_lo, y_lo = view.origin_A(extent_A)
        n, p = view.image_px, view.pixel_A
        col = (np.mod(xy[:, 0], extent_A) - x_lo) / p - 0.5
        row = n - 0.5 - (np.mod(xy[:, 1], extent_A) - y_lo) / p
        inside_view = (col >= -0.5) & (col < n - 0.5) & (row >= -0.5) & (row < n - 0.5)
    return {
        "xy": np.stack([row, col], 1).astype(np.float32)[inside_view],
        "is_surface": is_surface[inside_view],
        "species": species[inside_view],
        "n_atoms": counts.astype(np.int16)[inside_view],
    }


CONTRAST_THRESHOLD = 0.04
"""|column - ring| below this (vacuum = 1) is intermediate contrast."""
RING_RADIUS_A = 1.2
"""Background ring radius: half the shortest projected Pt-Pt column distance (2.40 A)."""


def contrast_classes(image: np.ndarray, xy: np.ndarray, pixel_A: float, periodic: bool = True) -> np.ndarray:
    """0 black / 1 intermediate / 2 white: column value minus the mean on a ring around it."""
    from scipy.ndimage import map_coordinates

    if len(xy) == 0:
        return np.zeros(0, dtype=np.int8)
    mode = "grid-wrap" if periodic else "nearest"
    centre = map_coordinates(image, xy.T, order=1, mode=mode)
    ang = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    r = RING_RADIUS_A / pixel_A
    ring_pts = xy[:, None, :] + r * np.stack([np.sin(ang), np.cos(ang)], 1)[None]
    ring = map_coordinates(image, ring_pts.reshape(-1, 2).T, order=1, mode=mode).reshape(len(xy), -1)
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
