"""The user-made abTEM frames (benchmarks/user_abtem.py): real multislice on a coarse grid, one specimen."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("abtem")


def test_a_user_frame_is_a_square_field_with_the_support_on_its_recorded_side(tmp_path: Path) -> None:
    from benchmarks.user_abtem import main

    main(["--out", str(tmp_path), "--specimens", "1", "--defocus-per-specimen", "1", "--gpts", "160"])
    meta = json.loads((tmp_path / "frames.json").read_text())
    (frame,) = meta["frames"]
    img = np.load(tmp_path / f"{frame['name']}.npy")
    assert img.shape == (160, 160) and abs(meta["pixel_size_A"] - 53.0 / 160) < 0.01
    side = {"bottom": img[-40:], "top": img[:40], "left": img[:, :40], "right": img[:, -40:]}
    far = {"bottom": img[:20], "top": img[-20:], "left": img[:, -20:], "right": img[:, :20]}
    s = frame["support_side"]
    assert side[s].std() > 5 * far[s].std()  # lattice contrast where the support is, flat vacuum opposite
    assert abs(float(np.median(far[s])) - 1.0) < 0.05  # abTEM's plane wave: vacuum intensity 1
    assert 17.0 <= float(np.hypot(*frame["tilt_mrad"])) <= 53.0  # 1-3 deg about one axis
    assert frame["focal"] == "envelope" and 50.0 <= frame["c10_A"] <= 100.0
    assert (frame["focal_spread_A"], frame["vibration_pm"]) == (40.0, 50.0)  # the paper's optics by default

    # the same specimen with other optics, listed beside it in the same folder
    args = ["--specimens", "1", "--defocus-per-specimen", "1", "--gpts", "160", "--name-prefix", "b-"]
    main(["--out", str(tmp_path), *args, "--focal-spread", "25", "--vibration-pm", "0"])
    frames = {f["name"]: f for f in json.loads((tmp_path / "frames.json").read_text())["frames"]}
    assert set(frames) == {frame["name"], f"b-{frame['name']}"}
    other = frames[f"b-{frame['name']}"]
    assert (other["focal_spread_A"], other["vibration_pm"]) == (25.0, 0.0)
    sharp = np.load(tmp_path / f"b-{frame['name']}.npy")
    # no vibration blur, less focal damping: more contrast at the finest spacings
    assert np.abs(np.diff(sharp, axis=1)).mean() > 1.2 * np.abs(np.diff(img, axis=1)).mean()
