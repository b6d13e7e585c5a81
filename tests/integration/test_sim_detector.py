"""Explicit focal averaging, band-limited rendering at any pixel, and the `detector` preset."""

from __future__ import annotations

import numpy as np
import pytest

from training.sim import imaging
from training.sim.simulate import run_task
from training.sim.splits import split_structures
from training.sim.worlds import WORLDS, World, file_attrs, plan, sampled_test_path


@pytest.fixture(scope="module")
def pt_waves():
    """Exit waves of a 7-atom Pt column next to a 3-atom one in vacuum (one phonon config, 0.1 A grid)."""
    from ase import Atoms

    pos = [(5.0, 6.0, 1.0 + 2.775 * i) for i in range(7)] + [(8.0, 6.0, 1.0 + 2.775 * i) for i in range(3)]
    atoms = Atoms("Pt10", positions=pos, cell=[12.8, 12.8, 20.0], pbc=True)
    sampling = imaging.Sampling(gpts=128, slice_thickness_A=1.0, n_phonons=1, b_factor_A2=0.0, image_px=128)
    return imaging.exit_waves(atoms, [20.0], sampling, (0.0, 0.0), seed=0), 12.8


def test_focal_average_without_spread_is_the_coherent_abtem_image(pt_waves) -> None:
    import abtem

    waves, _ = pt_waves
    optics = imaging.Optics(focal_spread_nm=0.0)
    ours = imaging.CoherentImager(waves, optics).images(6.0)[0]
    ctf = abtem.CTF(
        energy=optics.energy_eV,
        angular_spread=optics.convergence_mrad,
        aberration_coefficients={"C10": 60.0, "C30": optics.cs_um * 1e4, "C50": optics.c5_mm * 1e7},
    )
    ref = np.asarray(waves.apply_ctf(ctf).intensity().reduce_ensemble().compute().array)
    np.testing.assert_allclose(ours, ref.reshape(ours.shape), atol=2e-4)
    assert imaging.focal_nodes(optics)[0].tolist() == [0.0]


def test_gauss_hermite_focal_average_converges(pt_waves) -> None:
    """Nodes x weights integrate exp(-(d/fs)^2); images converge to < 0.005 RMS by the default 8 nodes."""
    waves, extent = pt_waves
    base = imaging.Optics()
    delta, w = imaging.focal_nodes(base)
    assert len(delta) == 8 and w.sum() == pytest.approx(1.0)
    fs = base.focal_spread_nm * 10
    assert (w * delta**2).sum() == pytest.approx(fs**2 / 2)  # variance of exp(-(d/fs)^2): fs^2 / 2
    view = imaging.View(image_px=64, pixel_A=0.2)

    def img(n: int) -> np.ndarray:
        optics = base.model_copy(update={"focal_points": n})
        return imaging.render_view(imaging.CoherentImager(waves, optics).images(12.0), extent, view, 0.5)

    ref = img(48)
    err = {n: float(np.sqrt(((img(n) - ref) ** 2).mean())) for n in (1, 2, 4, 8)}
    assert err[1] > err[2] > err[4] > err[8]
    assert err[8] < 0.005 and err[8] < 0.1 * err[1]


def test_explicit_average_keeps_the_intensity_the_envelope_loses(pt_waves) -> None:
    """The quasi-coherent envelope damps every beam, so it removes high-angle intensity (mean < 1);
    explicit averaging conserves it (an average of unit-norm coherent images): the two differ."""
    waves, extent = pt_waves
    optics = imaging.Optics()
    view = imaging.View(image_px=64, pixel_A=0.2)
    exp = imaging.render_view(imaging.CoherentImager(waves, optics).images(6.0), extent, view, 0.5)
    env = imaging.render_view(imaging.envelope_images(waves, 6.0, optics), extent, view, 0.5)
    assert exp.mean() == pytest.approx(1.0, abs=2e-3)
    assert env.mean() < exp.mean() - 0.002
    assert np.sqrt(((exp - env) ** 2).mean()) > 0.005


def test_render_view_bins_exactly_and_keeps_vacuum_at_one() -> None:
    """A 0.06 A view binned 4 x 4 is the 0.24 A view of the same window: the lead's evaluation path."""
    rng = np.random.default_rng(0)
    n, extent = 200, 20.0
    k = np.fft.fftfreq(n, d=extent / n)
    spec = np.fft.fft2(rng.normal(0, 1, (n, n))) * np.exp(-((k[:, None] ** 2 + k[None] ** 2) / 0.5))
    field = (1 + 0.05 * np.fft.ifft2(spec).real / np.fft.ifft2(spec).real.std()).astype(np.float32)
    fine = imaging.render_view(field, extent, imaging.View(image_px=288, pixel_A=0.06), 0.5)
    coarse = imaging.render_view(field, extent, imaging.View(image_px=72, pixel_A=0.24), 0.5)
    binned = fine.reshape(72, 4, 72, 4).mean((1, 3))
    np.testing.assert_allclose(binned, coarse, atol=1e-5)
    ones = imaging.render_view(
        np.ones((n, n), np.float32), extent, imaging.View(image_px=72, pixel_A=0.24), 0.5
    )
    np.testing.assert_allclose(ones, 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="wider"):
        imaging.View(image_px=100, pixel_A=0.24).origin_A(extent)


def test_detector_preset_states_dose_per_area_and_derives_counts() -> None:
    p = WORLDS["detector"]
    assert p.pixel_size_A() == 0.24 and p.dose_e_per_A2 == 125.0
    assert p.dose == pytest.approx(7.2) and p.test_dose() == pytest.approx(0.45)
    assert p.sampling.image_px * p.pixel_size_A() == pytest.approx(61.44)
    assert p.test_view.image_px * p.test_view.pixel_A == pytest.approx(61.44)
    assert p.extent_A() > 61.44 and p.extent_A() / p.sampling.gpts < 0.105  # multislice grid <= 0.105 A
    assert p.optics.focal_mode == "explicit" and WORLDS["mini"].optics.focal_mode == "envelope"
    tasks = plan(p)
    test_ids = set(split_structures(np.array([t.structure.structure_id for t in tasks]), p.split)["test"])
    assert {t.structure.structure_id for t in tasks if t.test_view} == test_ids and len(test_ids) >= 2
    a, b = file_attrs(p), file_attrs(p, "test_view")
    assert a["dose"] == pytest.approx(7.2) and b["dose"] == pytest.approx(0.45)
    assert a["dose_e_per_A2"] == b["dose_e_per_A2"] == 125.0 and b["binning_to_train"] == 4
    assert sampled_test_path(p, __import__("pathlib").Path("data/detector.h5")).name == "detector-test60pm.h5"
    # the old presets keep their counts per pixel and report the dose per area it implies
    assert WORLDS["mini"].dose == 0.45 and WORLDS["mini"].dose_per_area() == pytest.approx(18.65, rel=0.01)


@pytest.mark.slow
def test_a_cropped_task_renders_both_views_consistently() -> None:
    """A tiny task with a 0.24 A window and a 0.06 A test view: same window, bins to it, truth inside."""
    tiny = WORLDS["tiny"]
    preset = World.model_validate(
        tiny.model_dump()
        | {
            "name": "tiny-view",
            "n_structures": 3,
            "sampling": tiny.sampling.model_dump() | {"image_px": 96, "pixel_A": 0.24},
            "test_view": {"image_px": 384, "pixel_A": 0.06},
            "dose_e_per_A2": 125.0,
            "defocus_nm": [6.0],
            "thicknesses_nm": [2.0],
        }
    )
    spec = plan(preset)[0].model_copy(update={"test_view": True})
    res = run_task(spec.model_dump_json(), preset.model_dump_json())
    (img,), (fine,) = res.images, res.extra["test_view"]
    assert img.clean.shape == (96, 96) and fine.clean.shape == (384, 384)
    assert img.meta["dose"] == pytest.approx(7.2) and fine.meta["dose"] == pytest.approx(0.45)
    np.testing.assert_allclose(fine.clean.reshape(96, 4, 96, 4).mean((1, 3)), img.clean, atol=1e-4)
    assert img.clean[:5].mean() == pytest.approx(1.0, abs=0.01)
    for rec, n in ((img, 96), (fine, 384)):
        xy = rec.columns["xy"]
        assert len(xy) > 10 and (xy >= -0.5).all() and (xy < n - 0.5).all()
    pt = img.columns["species"] == 78
    np.testing.assert_allclose(
        fine.columns["xy"][fine.columns["species"] == 78], 4 * img.columns["xy"][pt] + 1.5, atol=1e-3
    )


def test_weak_object_explicit_average_equals_the_envelope() -> None:
    """Linear imaging (one C atom): the focal envelope is exact there, so both modes must agree."""
    from ase import Atoms

    atoms = Atoms("C", positions=[(6.4, 6.4, 1.0)], cell=[12.8, 12.8, 2.0], pbc=True)
    sampling = imaging.Sampling(gpts=128, slice_thickness_A=1.0, n_phonons=1, b_factor_A2=0.0, image_px=128)
    waves = imaging.exit_waves(atoms, [2.0], sampling, (0.0, 0.0), seed=0)
    optics, view = imaging.Optics(), imaging.View(image_px=64, pixel_A=0.2)
    for df in (6.0, 12.0):
        exp = imaging.render_view(imaging.CoherentImager(waves, optics).images(df), 12.8, view, 0.5)
        env = imaging.render_view(imaging.envelope_images(waves, df, optics), 12.8, view, 0.5)
        assert np.abs(exp - 1).max() > 0.015
        assert np.abs(exp - env).max() < 0.05 * np.abs(exp - 1).max()


@pytest.mark.slow
def test_simulate_writes_the_test_view_file_and_resumes(tmp_path) -> None:
    from training.sim.dataset import SimulatedDataset
    from training.sim.simulate import simulate

    tiny = WORLDS["tiny"]
    preset = World.model_validate(
        tiny.model_dump()
        | {
            "name": "tiny-view",
            "n_structures": 3,
            "tilts_deg": [(0.0, 0.0)],
            "sampling": tiny.sampling.model_dump() | {"image_px": 64, "pixel_A": 0.24},
            "test_view": {"image_px": 256, "pixel_A": 0.06},
            "dose_e_per_A2": 125.0,
            "defocus_nm": [6.0],
            "thicknesses_nm": [2.0],
        }
    )
    out = tmp_path / "set.h5"
    first = simulate(preset, out, workers=1, progress=False)
    assert first["tasks_run"] == 3 and not first["failed"]
    again = simulate(preset, out, workers=1, progress=False)
    assert again["tasks_run"] == 0
    test_ids = {t.structure.structure_id for t in plan(preset) if t.test_view}
    with SimulatedDataset(out) as a, SimulatedDataset(sampled_test_path(preset, out)) as b:
        assert len(a) == 3 and set(b.structure_ids()) == test_ids and len(b) == 1
        assert b.attrs["dose"] == pytest.approx(0.45) and a.attrs["dose"] == pytest.approx(7.2)
        assert b.attrs["binning_to_train"] == 4 and b.clean(0).shape == (256, 256)
