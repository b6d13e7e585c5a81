"""The scene player (sources/scene.py) and the Poisson table (compute/poisson_table.py), on a small
hand-made bundle in the real file format: one specimen held, drift by the stated A/s, focus blended
between neighbouring defocus images, the event frame switches variant and the truth says so."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from sbd_stream.compute.poisson_table import PoissonTable
from sbd_stream.sources.emulator import FrameSource, SourceKind
from sbd_stream.sources.emulator_settings import EmulatorSettings
from sbd_stream.sources.scene import SCENE_FORMAT, ScenePlayer, read_scene

PX = 0.24  # bundle pixel (A)
H = 64


def _blob(rr: np.ndarray, cc: np.ndarray, r: float, c: float, amp: float) -> np.ndarray:
    return amp * np.exp(-((rr - r) ** 2 + (cc - c) ** 2) / (2 * 1.5**2))


def write_bundle(path: Path, defocus: tuple[float, ...] = (0.0, 2.5, 5.0)) -> dict[str, tuple[float, float]]:
    """Columns as Gaussians (band-limited: sigma 0.36 A); the column's contrast grows with defocus, so a
    blend is checkable; ``vanish`` loses the column at (20, 40)."""
    rr, cc = np.mgrid[0:H, 0:H].astype(np.float64)
    cols = {"a": (32.0, 20.0), "b": (20.0, 40.0)}
    with h5py.File(path, "w") as f:
        f.attrs.update(format=SCENE_FORMAT, pixel_size_A=PX)
        g = f.create_group("scenes/s000-test")
        g["defocus_nm"] = np.asarray(defocus, np.float32)
        for variant, keep in (("base", ("a", "b")), ("vanish", ("a",))):
            imgs = np.stack(
                [1.0 + sum(_blob(rr, cc, *cols[k], 0.2 + 0.1 * j) for k in keep) for j in range(len(defocus))]
            )
            v = g.create_group(variant)
            v["images"] = imgs.astype(np.float32)
            v["columns/xy"] = np.array([cols[k] for k in keep], np.float32)
            v["columns/species"] = np.full(len(keep), 78, np.uint8)
            v["columns/is_surface"] = np.ones(len(keep), bool)
            ev = {"kind": "vanish", "atoms": 5, "xy_px": list(cols["b"]), "what": "column removed"}
            v.attrs["event"] = json.dumps(ev) if variant == "vanish" else ""
    return cols


def _settings(path: Path, **kw) -> EmulatorSettings:
    base = dict(scene=path, shape=(300, 300), pixel_size_A=0.060, dose=0.45, rate_hz=40.0, focus_nm=0.0,
                focus_rate_nm_per_s=0.0, drift_A_per_s=0.0, render_interval_s=0.025)  # fmt: skip
    return EmulatorSettings(**(base | kw))


def _peak(img: np.ndarray, near: np.ndarray, r: int = 3) -> np.ndarray:
    """Sub-pixel peak of the contrast near ``near``: a parabola through the log of the contrast at the
    brightest pixel and its neighbours (exact for a Gaussian column)."""
    r0, c0 = np.round(near).astype(int)
    win = img[r0 - r : r0 + r + 1, c0 - r : c0 + r + 1]
    i, j = np.unravel_index(np.argmax(win), win.shape)
    i, j = i + r0 - r, j + c0 - r
    lg = np.log(np.clip(img - 1.0, 1e-9, None))

    def vertex(a: float, b: float, c: float) -> float:
        return 0.5 * (a - c) / (a - 2 * b + c)

    return np.array(
        [i + vertex(lg[i - 1, j], lg[i, j], lg[i + 1, j]), j + vertex(lg[i, j - 1], lg[i, j], lg[i, j + 1])]
    )


def test_static_scene_holds_one_specimen_at_the_detector_pixel(tmp_path: Path) -> None:
    cols = write_bundle(tmp_path / "s.h5")
    p = ScenePlayer(read_scene(tmp_path / "s.h5"), _settings(tmp_path / "s.h5"))
    assert p.n == 4 * H  # 0.24 A -> 0.060 A
    first = p.clean(0)
    for k in (1, 17, 399):
        np.testing.assert_array_equal(p.clean(k), first)  # the same specimen, every frame
    assert first[:10].mean() == pytest.approx(1.0, abs=1e-6) and first[:, :10].mean() == pytest.approx(1.0)
    # the column sits where the bundle's coordinates say: detector = 4 x bundle + 1.5, plus the centring
    xy = p.columns(0)["xy"]
    np.testing.assert_allclose(xy[0], np.array(cols["a"]) * 4 + 1.5 + np.array(p.origin), atol=1e-9)
    np.testing.assert_allclose(_peak(first, xy[0]), xy[0], atol=0.05)
    # binning 4 x 4 gives the bundle image back (exact resampling of a band-limited image, box included)
    r0, c0 = p.origin
    binned = first[r0 : r0 + p.n, c0 : c0 + p.n].reshape(H, 4, H, 4).mean((1, 3))
    bundle = read_scene(tmp_path / "s.h5").images["base"][0]
    assert np.abs(binned - bundle)[4:-4, 4:-4].max() < 2e-3


def test_drift_moves_a_column_by_the_stated_angstrom_per_second(tmp_path: Path) -> None:
    write_bundle(tmp_path / "s.h5")
    cfg = _settings(tmp_path / "s.h5", drift_A_per_s=0.5, drift_angle_deg=30.0)
    p = ScenePlayer(read_scene(tmp_path / "s.h5"), cfg)
    k = 120  # 3 s at 40 Hz: 1.5 A = 25 detector pixels
    xy0, xyk = p.columns(0)["xy"][0], p.columns(k)["xy"][0]
    moved = _peak(p.clean(k), xyk) - _peak(p.clean(0), xy0)
    want = 1.5 / 0.060 * np.array([-np.sin(np.radians(30)), np.cos(np.radians(30))])  # rows grow downwards
    np.testing.assert_allclose(moved, want, atol=0.05)
    np.testing.assert_allclose(xyk - xy0, want, atol=1e-9)


def test_focus_change_blends_the_neighbouring_defocus_images(tmp_path: Path) -> None:
    write_bundle(tmp_path / "s.h5")
    p = ScenePlayer(read_scene(tmp_path / "s.h5"), _settings(tmp_path / "s.h5", focus_rate_nm_per_s=1.0))
    at = {k: p.state(k).focus_nm for k in (0, 40, 100, 200, 280)}
    assert at == pytest.approx({0: 0.0, 40: 1.0, 100: 2.5, 200: 5.0, 280: 3.0})  # bounces at the series' end
    xy = p.columns(0)["xy"][0]
    r, c = np.round(xy).astype(int)
    contrast = {k: p.clean(k)[r, c] - 1.0 for k in (0, 40, 100)}
    # 1 nm of 2.5 between images of contrast 0.2 and 0.3: 0.24 (at the peak, box-integrated)
    assert contrast[40] == pytest.approx(0.6 * contrast[0] + 0.4 * contrast[100], rel=1e-4)


def test_the_event_frame_switches_variant_and_the_truth_says_so(tmp_path: Path) -> None:
    cols = write_bundle(tmp_path / "s.h5")
    cfg = _settings(tmp_path / "s.h5", event_frame=50, drift_A_per_s=0.3, first_seq=7)
    p = ScenePlayer(read_scene(tmp_path / "s.h5"), cfg)
    assert [p.state(k).variant for k in (0, 49, 50, 51)] == ["base", "base", "vanish", "vanish"]
    truth = p.event_truth()
    assert truth is not None and truth["frame"] == 50 and truth["seq"] == 57 and truth["kind"] == "vanish"
    np.testing.assert_allclose(truth["xy_px"], p.to_frame(np.array(cols["b"]), 50)[0])
    r, c = np.round(truth["xy_px"]).astype(int)
    assert p.clean(49)[r, c] > 1.1 and p.clean(50)[r, c] == pytest.approx(1.0, abs=0.01)
    assert len(p.columns(49)["xy"]) == 2 and len(p.columns(50)["xy"]) == 1
    with pytest.raises(ValueError, match="no event variant"):
        ScenePlayer(read_scene(tmp_path / "s.h5"), cfg.model_copy(update={"event": "hop"}))


def test_frame_source_plays_the_scene_with_fresh_counts_every_frame(tmp_path: Path) -> None:
    write_bundle(tmp_path / "s.h5")
    for pool in (0, 3):
        src = FrameSource(_settings(tmp_path / "s.h5", pool=pool, dtype="uint8"))
        assert src.kind is SourceKind.scene
        it = src.frames()
        frames = [next(it) for _ in range(40)]
        counts = np.stack([c for c, _ in frames]).astype(np.float64)
        assert counts.dtype == np.float64 and frames[0][0].dtype == np.uint8
        assert not np.array_equal(frames[0][0], frames[1][0])  # fresh noise
        truth = frames[0][1]
        assert truth is not None and all(t is truth for _, t in frames)  # one static render, shared
        err = counts.mean(0) - truth
        assert abs(err.mean()) < 0.01 and np.abs(err).max() < 0.45 * 6  # mean of 40 frames near the truth
        if pool:  # a pool frame used again (frames 0, 3, 6, ...) is not the same vacuum counts again
            vac = np.abs(truth - 0.45) < 1e-6
            assert vac.mean() > 0.1
            same = [(counts[0][vac] == counts[k][vac]).mean() for k in (3, 6, 9)]
            assert max(same) < 0.6, same  # independent Poisson(0.45) pixels agree ~49 % of the time
            sums = counts[:, vac].sum(0)  # 40 frames summed: Poisson(18), variance = mean
            assert sums.var() / sums.mean() == pytest.approx(1.0, abs=0.1)


def test_poisson_table_matches_poisson_moments() -> None:
    rng = np.random.default_rng(0)
    table = PoissonTable(1.2)
    for lam in (0.05, 0.45, 1.0):
        c = table.draw(table.index(np.full(400_000, lam, np.float32)), rng).astype(np.float64)
        assert c.mean() == pytest.approx(lam, rel=5e-3 + 4 / np.sqrt(400_000 * lam))
        assert c.var() == pytest.approx(lam, rel=1e-2 + 6 / np.sqrt(400_000 * lam))
        assert (c == 0).mean() == pytest.approx(np.exp(-lam), abs=3e-3)


def test_poisson_table_anchor_is_an_exact_level() -> None:
    """The vacuum rate (anchor) is quantised to itself, so the scene's vacuum matches the exact pool's."""
    for lam_max, levels, anchor in ((0.6528, 256, 0.45), (1.2, 1024, 0.45), (3.0, 256, 1.0), (0.5, 16, 0.45)):
        table = PoissonTable(lam_max, levels=levels, anchor=anchor)
        assert table.lam_max >= lam_max
        step = table.lam_max / (levels - 1)
        q = table.index(np.array([anchor], np.float32))[0] >> table.u_bits
        assert q * step == pytest.approx(anchor, rel=1e-6)
    rng = np.random.default_rng(1)
    table = PoissonTable(0.6528, levels=256, anchor=0.45)
    c = table.draw(table.index(np.full(400_000, 0.45, np.float32)), rng).astype(np.float64)
    assert c.mean() == pytest.approx(0.45, rel=4 / np.sqrt(400_000 * 0.45))
