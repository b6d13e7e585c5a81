"""A simulated dataset's image is cut to the frame around its specimen, not from its top-left corner."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from sbd_stream.sources.emulator import EmulatorSettings, FrameSource

SAMPLES = Path(__file__).resolve().parents[2] / "sbd_stream" / "samples" / "pt_ceo2_test.h5"


def test_the_crop_is_centred_on_the_specimen_and_a_small_image_is_tiled() -> None:
    from sbd_stream.sources.crop import fit_to_frame

    img = np.ones((100, 100), np.float32)
    img[80:90, 5:15] = 2.0  # the specimen, far from the top-left corner
    out = fit_to_frame(img, (20, 20))
    assert out.shape == (20, 20) and int((out == 2.0).sum()) == 100  # all of it in the frame
    assert fit_to_frame(np.ones((100, 100), np.float32), (20, 30)).shape == (20, 30)  # vacuum: centred
    small = np.arange(100, dtype=np.float32).reshape(10, 10)
    tiled = fit_to_frame(small, (25, 30))
    assert tiled.shape == (25, 30) and np.array_equal(tiled[:10, :10], small)  # whole, from its start
    mixed = np.ones((10, 100), np.float32)
    mixed[:, 90:95] = 3.0
    out = fit_to_frame(mixed, (25, 20))  # rows tiled from 0, columns cut around the specimen
    assert out.shape == (25, 20) and int((out == 3.0).sum()) == 125


def test_the_bundled_sample_frames_hold_the_specimen_at_a_small_shape() -> None:
    """Its specimen lies in the images' bottom quarter: a 256^2 top-left crop was pure vacuum, and the
    demo's PSNR scored a flat truth."""
    src = FrameSource(EmulatorSettings(source=SAMPLES, shape=(256, 256), dose=0.45, pixel_size_A=0.060))
    clean = [src.truth(k) / 0.45 for k in range(len(src))]
    assert float(np.mean([np.mean(np.abs(c - 1.0) > 0.02) for c in clean])) > 0.5 and src.note is None


def test_frames_of_vacuum_only_are_noted(tmp_path: Path) -> None:
    path = tmp_path / "vacuum.h5"
    with h5py.File(path, "w") as f:
        f["images"] = np.ones((2, 32, 32), np.float32)
        f.attrs["pixel_size_A"] = 0.060
    src = FrameSource(EmulatorSettings(source=path, shape=(16, 16), dose=0.45, pixel_size_A=0.060))
    assert src.note is not None and "vacuum.h5" in src.note and "16x16" in src.note
