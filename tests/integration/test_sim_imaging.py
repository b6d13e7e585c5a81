"""Image formation with real abTEM: conventions, exit-wave reuse, normalisation, ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from sbd_stream.compute.noise import poisson_counts
from training.sim import imaging
from training.sim.simulate import run_task
from training.sim.structures import Z_PT
from training.sim.worlds import WORLDS, plan

pytestmark = pytest.mark.slow


def test_abtem_aberration_conventions() -> None:
    """abTEM's `defocus` is -C10; Cs and C5 are C30 and C50 in Angstrom (docs/simulation.md)."""
    import abtem

    ctf = abtem.CTF(defocus=-60.0, Cs=-1.3e5, C5=5e7, energy=300e3)
    assert ctf.aberration_coefficients["C10"] == pytest.approx(60.0)
    assert ctf.aberration_coefficients["C30"] == pytest.approx(-1.3e5)
    assert ctf.aberration_coefficients["C50"] == pytest.approx(5e7)


def _column_contrast(c10_nm: float) -> float:
    """Pt column value minus background for a 5-atom column in vacuum at C10 = c10_nm."""
    from ase import Atoms

    atoms = Atoms(
        "Pt5", positions=[(6.0, 6.0, 1.0 + 2.775 * i) for i in range(5)], cell=[12, 12, 15], pbc=True
    )
    sampling = imaging.Sampling(gpts=120, slice_thickness_A=1.0, n_phonons=1, b_factor_A2=0.0, image_px=120)
    waves = imaging.exit_waves(atoms, [15.0], sampling, (0.0, 0.0), seed=0)
    img = imaging.defocus_images(waves, c10_nm, imaging.Optics())[0]  # [x, y], 0.1 A samples
    return float(img[60, 60] - np.median(img))


def test_negative_cs_gives_bright_columns_at_overfocus_and_dark_at_underfocus() -> None:
    assert _column_contrast(+6.0) > 0.05  # C10 > 0 with Cs = -13 um: Scherzer-like bright atoms
    assert _column_contrast(-6.0) < -0.05


@pytest.fixture(scope="module")
def tiny_task():
    preset = WORLDS["tiny"]
    spec = plan(preset)[1]  # a tilted one: tilt 2 deg about x
    before = imaging.MULTISLICE_RUNS
    result = run_task(spec.model_dump_json(), preset.model_dump_json())
    return preset, spec, result, imaging.MULTISLICE_RUNS - before


def test_defocus_sweep_reuses_one_exit_wave(tiny_task) -> None:
    _, spec, result, runs = tiny_task
    assert runs == 1
    assert len(result.images) == len(spec.defocus_nm) * len(spec.thicknesses_nm) == 6
    defoci = sorted({r.meta["defocus_nm"] for r in result.images})
    assert defoci == spec.defocus_nm
    a, b = (np.stack([r.clean for r in result.images if r.meta["defocus_nm"] == d]) for d in defoci[:2])
    assert np.abs(a - b).mean() > 0.01  # defocus changes the image


def test_images_non_negative_and_vacuum_at_dose(tiny_task) -> None:
    preset, _, result, _ = tiny_task
    px = preset.pixel_size_A()
    top = result.structure["particle_extent_A"][1] + result.structure["y_interface_A"]
    n_vac_rows = int((preset.extent_A() - top - 3.0) / px)  # rows > 3 A above the particle top
    assert n_vac_rows >= 3
    for rec in result.images:
        assert rec.clean.dtype == np.float32 and rec.clean.shape == (96, 96)
        assert rec.clean.min() >= 0
        assert rec.clean[:n_vac_rows].mean() == pytest.approx(1.0, abs=0.01)
        assert rec.meta["dose"] == pytest.approx(0.45)
    rng = np.random.default_rng(0)
    counts = np.stack([poisson_counts(result.images[0].clean, 0.45, rng) for _ in range(200)])
    assert counts[:, :n_vac_rows].mean() == pytest.approx(0.45, rel=0.03)


def test_columns_sit_on_image_extrema(tiny_task) -> None:
    """At C10 = +6 nm Pt columns are white: a local maximum within 0.5 A of each listed column."""
    preset, _, result, _ = tiny_task
    px = preset.pixel_size_A()
    recs = [r for r in result.images if r.meta["defocus_nm"] == 6.0]
    assert recs
    for rec in recs:
        c = rec.columns
        pt = (c["species"] == Z_PT) & (c["n_atoms"] >= 2)
        assert pt.sum() >= 5
        r = int(np.ceil(1.0 / px))
        for row, col in c["xy"][pt]:
            i, j = round(row), round(col)
            win = rec.clean[i - r : i + r + 1, j - r : j + r + 1]
            di, dj = np.unravel_index(np.argmax(win), win.shape)
            assert np.hypot(i - r + di - row, j - r + dj - col) * px < 0.5
        assert (c["contrast"][pt] == 2).mean() > 0.5
        assert rec.meta["contrast_class"] == 2


def test_surface_labels_only_on_pt_and_not_all(tiny_task) -> None:
    c = tiny_task[2].images[0].columns
    pt = c["species"] == Z_PT
    assert not c["is_surface"][~pt].any()
    assert 0 < c["is_surface"][pt].sum() < pt.sum()


def test_binning_preserves_the_mean() -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 2, (2, 100, 100)).astype(np.float32)
    y = imaging.to_detector(x, 64)
    assert y.shape == (2, 64, 64)
    np.testing.assert_allclose(y.mean((1, 2)), x.mean((1, 2)), rtol=1e-5)
    m = imaging._bin_matrix(8, 4)
    np.testing.assert_allclose(m.sum(1), 1.0)  # a detector pixel averages the samples it covers
    np.testing.assert_allclose(m[0, [7, 0, 1]], [0.25, 0.5, 0.25])  # centred pixels, periodic edges
