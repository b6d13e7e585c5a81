"""Where the simulator puts things in an image: the vibration blur's width, the detector window inside the
cell, the column ground truth of tilted and cropped views, and which way a task's tilt turns the wave.

Why: the ground truth (columns, regions) is what every learned and classical method is scored against, and
the blur width is the paper's 50 pm vibration; an error in either shifts or smears every image and label
without failing a run (docs/simulation.md, "Imaging").
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require_module

from training.sim.imaging import View, column_truth, render_view, vibration_blur
from training.sim.structures import Z_CE, Z_PERIOD, Z_PT, build, support_layers_for

EXT, N_IN = 20.0, 200  # a 20 A periodic cell sampled every 0.1 A (sample i at x = i * 0.1 A)


def _delta(x_A: float, y_A: float) -> np.ndarray:
    """[x, y] samples: one bright sample at (x, y)."""
    out = np.zeros((N_IN, N_IN), np.float32)
    out[round(x_A / EXT * N_IN), round(y_A / EXT * N_IN)] = 1.0
    return out


def _moments(weights: np.ndarray, coords: np.ndarray) -> tuple[float, float]:
    """Mean and variance of ``coords`` weighted by ``weights``."""
    mean = float((weights * coords).sum() / weights.sum())
    return mean, float((weights * (coords - mean) ** 2).sum() / weights.sum())


def test_vibration_blur_has_the_stated_rms_per_axis() -> None:
    """A point blurred by an RMS vibration sigma: second moment sigma^2 along x and along y."""
    sigma = 0.5
    out = vibration_blur(_delta(10.0, 10.0), EXT, sigma)
    coords = np.arange(N_IN) * EXT / N_IN
    for axis in (0, 1):
        mean, var = _moments(out.sum(1 - axis), coords)
        assert mean == pytest.approx(10.0, abs=1e-6)
        assert var == pytest.approx(sigma**2, rel=0.01)
    assert out.sum() == pytest.approx(1.0, rel=1e-5)  # a blur, not a gain


def test_render_view_blurs_by_the_vibration_and_integrates_over_the_pixel() -> None:
    """A point through render_view: second moment sigma^2 + p^2 / 12 per axis (Gaussian vibration, then the
    pixel's box), at its true place in the window, whose x origin is centred in the cell."""
    sigma, p, n = 0.3, 0.4, 40  # a 16 A window in the 20 A cell: x from 2 to 18 A, y from 0 to 16 A
    x0, y0 = 7.0, 4.0  # off the centre on both axes
    out = render_view(_delta(x0, y0)[None], EXT, View(image_px=n, pixel_A=p), sigma)[0]
    x_lo = (EXT - n * p) / 2  # docs: the window is centred in x, starts at the support's bottom edge in y
    col_x = x_lo + (np.arange(n) + 0.5) * p
    row_y = (n - np.arange(n) - 0.5) * p  # row 0 at the top
    mx, vx = _moments(out.sum(0), col_x)
    my, vy = _moments(out.sum(1), row_y)
    assert (mx, my) == pytest.approx((x0, y0), abs=1e-3)
    assert vx == pytest.approx(sigma**2 + p**2 / 12, rel=0.01)
    assert vy == pytest.approx(sigma**2 + p**2 / 12, rel=0.01)
    assert View(image_px=n, pixel_A=p).origin_A(EXT) == pytest.approx((2.0, 0.0))


def _slab_columns() -> tuple[np.ndarray, np.ndarray]:
    """A 5-atom Pt column at (10, 5) A in the entrance 10 A of a 40 A slab, and a Ce column at (10, 19)
    A through the whole slab (above a 10 A window)."""
    pt = [[10.0, 5.0, z] for z in np.arange(0.0, 10.0, 2.0)]
    ce = [[10.0, 19.0, z] for z in np.arange(0.0, 40.0, 2.0)]
    return np.array(pt + ce), np.array([Z_PT] * len(pt) + [Z_CE] * len(ce))


def test_column_truth_in_a_view_is_centred_and_drops_columns_outside() -> None:
    pos, num = _slab_columns()
    view = View(image_px=50, pixel_A=0.2)  # x from 5 to 15 A, y from 0 to 10 A
    truth = column_truth(pos, num, 40.0, (0.0, 0.0), EXT, N_IN, 0.0, view=view)
    assert list(truth["species"]) == [Z_PT]  # the Ce column at y 19 A lies above the window
    assert list(truth["n_atoms"]) == [5]
    row, col = truth["xy"][0]
    assert col == pytest.approx((10.0 - 5.0) / 0.2 - 0.5)  # 24.5: pixel c is centred at x_lo + (c + 1/2) p
    assert row == pytest.approx(50 - 0.5 - 5.0 / 0.2)  # 24.5: row 0 at the top of the window


@pytest.mark.parametrize("axis", [0, 1])
def test_tilt_shifts_a_column_by_its_depth_before_the_exit(axis: int) -> None:
    """abTEM shifts the wave tan(tilt) per unit depth, so an atom at depth z lands (thickness - z) tan(tilt)
    off at the exit plane; a column near the entrance of a thick slab moves the most. Tilt about x moves
    columns along x (image columns); tilt about y along y (image rows, which run downward)."""
    pos, num = _slab_columns()
    view = View(image_px=50, pixel_A=0.2)
    tilt = (35.0, 0.0) if axis == 0 else (0.0, 35.0)
    straight = column_truth(pos, num, 40.0, (0.0, 0.0), EXT, N_IN, 0.0, view=view)["xy"][0]
    tilted = column_truth(pos, num, 40.0, tilt, EXT, N_IN, 0.0, view=view)["xy"][0]
    shift_px = (40.0 - 4.0) * np.tan(0.035) / 0.2  # mean exit distance of the atoms at z 0..8 A: 36 A
    expected = np.array([0.0, shift_px]) if axis == 0 else np.array([-shift_px, 0.0])
    np.testing.assert_allclose(tilted - straight, expected, atol=1e-3)


def test_a_task_tilted_about_x_shifts_its_truth_along_x() -> None:
    """simulate.run_task turns the task's ``tilt_deg`` (about x, about y) into the tilt of the wave and of the
    ground truth in that order: the tiny world's (2, 0) task has its Pt columns moved along x only."""
    require_module("abtem", "abTEM is in the train extra")
    from training.sim.simulate import run_task
    from training.sim.worlds import WORLDS, plan

    world = WORLDS["tiny"]
    task = next(t for t in plan(world) if t.tilt_deg == (2.0, 0.0))
    task = task.model_copy(update={"defocus_nm": [task.defocus_nm[0]]})
    result = run_task(task.model_dump_json(), world.model_dump_json())
    atoms, _ = build(task.structure, max(support_layers_for(t) for t in task.thicknesses_nm) * Z_PERIOD)
    thick_A = result.structure["thicknesses_A"]
    assert len(result.images) == len(thick_A) >= 1
    mrad = float(np.deg2rad(2.0) * 1e3)
    extent, n = float(atoms.cell[0, 0]), world.sampling.image_px
    view = world.sampling.view()
    for rec, t in zip(result.images, thick_A, strict=True):
        assert (rec.meta["tilt_x_deg"], rec.meta["tilt_y_deg"]) == (2.0, 0.0)

        def pt_xy(tilt: tuple[float, float], t: float = t) -> np.ndarray:
            truth = column_truth(atoms.positions, atoms.numbers, t, tilt, extent, n, 0.0, view=view)
            return truth["xy"][truth["species"] == Z_PT]

        got = rec.columns["xy"][rec.columns["species"] == Z_PT]
        np.testing.assert_allclose(got, pt_xy((mrad, 0.0)), atol=1e-4)
        moved = got - pt_xy((0.0, 0.0))
        assert np.all(moved[:, 1] > 0.1) and np.allclose(moved[:, 0], 0.0, atol=1e-4)  # along x only
