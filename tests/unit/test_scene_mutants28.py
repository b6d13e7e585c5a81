"""The held-scene player's documented behaviour the other scene tests left unpinned (mutation round 28):
non-square and smaller frames, render steps, the event's time and a hop's destination, the focus range,
and that drawing counts leaves the given vacuum frame alone (docs/emulator.md)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_scene import H, _settings, write_bundle

from sbd_stream.sources.scene import ScenePlayer, read_scene


def _player(path: Path, **kw) -> ScenePlayer:
    return ScenePlayer(read_scene(path), _settings(path, **kw))


def test_a_non_square_frame_centres_the_scene_on_both_axes(tmp_path: Path) -> None:
    """Frames larger than the scene are padded with vacuum, the scene centred, on each axis by its own
    side: a column lands at 4 x bundle + 1.5 + the origin, and the columns are bright there."""
    cols = write_bundle(tmp_path / "s.h5")
    p = _player(tmp_path / "s.h5", shape=(300, 420))
    assert p.n == 4 * H
    assert p.origin == ((300 - p.n) // 2, (420 - p.n) // 2)
    img = p.clean(0)
    assert img.shape == (300, 420)
    for name, xy in zip(("a", "b"), p.columns(0)["xy"], strict=True):
        np.testing.assert_allclose(xy, np.array(cols[name]) * 4 + 1.5 + np.array(p.origin), atol=1e-9)
        r, c = np.round(xy).astype(int)
        assert img[r, c] > 1.15, name
    assert img[:, : p.origin[1]].max() == pytest.approx(1.0) and img[
        :, p.origin[1] + p.n :
    ].max() == pytest.approx(1.0)


def test_a_frame_smaller_than_the_scene_shows_its_centre(tmp_path: Path) -> None:
    """A 200 x 200 frame of a 256 px scene: the scene's central 200 px, columns where ``columns`` says."""
    write_bundle(tmp_path / "s.h5")
    big = _player(tmp_path / "s.h5", shape=(256, 256))
    small = _player(tmp_path / "s.h5", shape=(200, 200))
    assert small.origin == (-28, -28)
    np.testing.assert_allclose(small.clean(0), big.clean(0)[28:228, 28:228], atol=1e-6)
    counts = small.counts(0, np.random.default_rng(0))
    assert counts.shape == (200, 200)
    np.testing.assert_allclose(small.columns(0)["xy"], big.columns(0)["xy"] - 28, atol=1e-9)


def test_the_specimen_is_rendered_every_render_interval_not_every_frame(tmp_path: Path) -> None:
    """``render_interval_s`` 0.1 s at 40 Hz: frames 0-3 share one render (drift included), frame 4 has
    moved by 0.1 s of drift; the expected counts are the same array within a render."""
    write_bundle(tmp_path / "s.h5")
    p = _player(tmp_path / "s.h5", drift_A_per_s=0.5, render_interval_s=0.1)
    assert p.frames_per_render == 4
    assert p.state(0) == p.state(1) == p.state(3) != p.state(4)
    assert p.expected(1) is p.expected(3)
    moved = np.array(p.state(4).shift_px) - np.array(p.state(0).shift_px)
    assert np.hypot(*moved) == pytest.approx(0.05 / 0.060)  # 0.5 A/s x 0.1 s in 0.060 A pixels
    # an interval that is no whole number of frames: the nearest (0.07 s at 40 Hz: 2.8 -> 3 frames)
    assert _player(tmp_path / "s.h5", render_interval_s=0.07).frames_per_render == 3


def test_the_event_truth_gives_its_time_in_seconds(tmp_path: Path) -> None:
    write_bundle(tmp_path / "s.h5")
    p = _player(tmp_path / "s.h5", event_frame=50, rate_hz=40.0)
    truth = p.event_truth()
    assert truth is not None and truth["t_s"] == pytest.approx(50 / 40.0)
    assert p.describe()["event"]["t_s"] == pytest.approx(1.25)


def _add_hop(path: Path) -> tuple[tuple[float, float], tuple[float, float]]:
    """A ``hop`` variant: column b moved from (20, 40) to (26, 46) in bundle pixels."""
    frm, to = (20.0, 40.0), (26.0, 46.0)
    rr, cc = np.mgrid[0:H, 0:H].astype(np.float64)
    with h5py.File(path, "a") as f:
        g = f["scenes/s000-test"]
        nd = len(g["defocus_nm"])
        blob = [
            1.0
            + sum(
                0.3 * np.exp(-((rr - r) ** 2 + (cc - c) ** 2) / (2 * 1.5**2)) for r, c in ((32.0, 20.0), to)
            )
            for _ in range(nd)
        ]
        v = g.create_group("hop")
        v["images"] = np.stack(blob).astype(np.float32)
        v["columns/xy"] = np.array([(32.0, 20.0), to], np.float32)
        v["columns/species"] = np.full(2, 78, np.uint8)
        v["columns/is_surface"] = np.ones(2, bool)
        ev = {"kind": "hop", "atoms": 5, "xy_px": list(frm), "to_xy_px": list(to), "what": "column moved"}
        v.attrs["event"] = json.dumps(ev)
    return frm, to


def test_a_hops_destination_is_in_detector_pixels_at_the_event_frame(tmp_path: Path) -> None:
    """docs: ``xy_px`` and ``to_xy_px`` are detector pixels at the event frame, drift included."""
    write_bundle(tmp_path / "s.h5")
    frm, to = _add_hop(tmp_path / "s.h5")
    p = _player(tmp_path / "s.h5", event_frame=40, event="hop", drift_A_per_s=0.3)
    truth = p.event_truth()
    assert truth is not None and truth["kind"] == "hop"
    np.testing.assert_allclose(truth["xy_px"], p.to_frame(np.array(frm), 40)[0])
    np.testing.assert_allclose(truth["to_xy_px"], p.to_frame(np.array(to), 40)[0])
    r, c = np.round(truth["to_xy_px"]).astype(int)
    assert p.clean(40)[r, c] > 1.2 and p.clean(39)[r, c] == pytest.approx(1.0, abs=0.01)


def test_a_focus_outside_the_scenes_series_is_refused(tmp_path: Path) -> None:
    write_bundle(tmp_path / "s.h5")  # series 0-5 nm
    for focus in (-0.5, 5.5):
        with pytest.raises(ValueError, match="outside the scene's series"):
            _player(tmp_path / "s.h5", focus_nm=focus)


def test_drawing_counts_leaves_the_given_vacuum_frame_untouched(tmp_path: Path) -> None:
    """The emulator passes windows of its pre-drawn vacuum pool, reused for later frames: drawing the
    scene's footprint must not write into them (a ghost of the specimen in later frames' vacuum)."""
    write_bundle(tmp_path / "s.h5")
    p = _player(tmp_path / "s.h5", dtype="uint8")
    rng = np.random.default_rng(0)
    vacuum = rng.poisson(0.45, (300, 300)).astype(np.uint8)
    before = vacuum.copy()
    out = p.counts(0, rng, vacuum)
    assert np.array_equal(vacuum, before)
    assert out.dtype == np.uint8 and not np.shares_memory(out, vacuum)


def test_an_event_between_render_steps_is_shown_at_its_own_time(tmp_path: Path) -> None:
    """An event at frame 50 with renders every 4 frames (48, 52, ...): the event frame is rendered at
    its own time, so the truth's position is the start position plus the drift over ``t_s``."""
    cols = write_bundle(tmp_path / "s.h5")
    p = _player(
        tmp_path / "s.h5", event_frame=50, drift_A_per_s=0.5, drift_angle_deg=30.0, render_interval_s=0.1
    )
    assert p.frames_per_render == 4
    truth = p.event_truth()
    assert truth is not None
    start = p.to_frame(np.array(cols["b"]), 0)[0]
    step = 0.5 * truth["t_s"] / 0.060 * np.array([-np.sin(np.radians(30)), np.cos(np.radians(30))])
    np.testing.assert_allclose(np.array(truth["xy_px"]) - start, step, atol=1e-9)
    assert p.state(49).shift_px == p.state(48).shift_px != p.state(50).shift_px


def test_focus_blends_the_two_images_around_it_for_a_non_linear_series(tmp_path: Path) -> None:
    """A series whose contrast is not linear in defocus (0.2, 0.6, 0.1): between two images the frame is
    their blend, not an extrapolation from a farther pair."""
    write_bundle(tmp_path / "s.h5")
    with h5py.File(tmp_path / "s.h5", "a") as f:
        ims = f["scenes/s000-test/base/images"]
        arr = ims[()]
        for j, amp in enumerate((0.2, 0.6, 0.1)):
            arr[j] = 1.0 + (arr[j] - 1.0) * amp / (0.2 + 0.1 * j)
        ims[...] = arr
    fixed = {z: _player(tmp_path / "s.h5", focus_nm=z) for z in (0.0, 2.5, 5.0)}
    r, c = np.round(fixed[0.0].columns(0)["xy"][0]).astype(int)
    contrast = {z: p.clean(0)[r, c] - 1.0 for z, p in fixed.items()}
    assert contrast[2.5] > 2.5 * contrast[0.0] and contrast[5.0] < contrast[0.0]
    for z, want in (
        (1.0, 0.6 * contrast[0.0] + 0.4 * contrast[2.5]),
        (4.0, 0.4 * contrast[2.5] + 0.6 * contrast[5.0]),
    ):
        got = _player(tmp_path / "s.h5", focus_nm=z).clean(0)[r, c] - 1.0
        assert got == pytest.approx(want, rel=1e-4), z
