"""`sbd-train evaluate-images` on clean images in the formats other simulators write."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import tifffile
from typer.testing import CliRunner

from sbd_stream.sources.emulator import resample
from training.cli import app
from training.evaluate.images import read_images
from training.sim.samples import read_quality_frames


def _clean_at(pixel_A: float) -> np.ndarray:
    images, _, px = read_quality_frames()
    return resample(images[0], px, pixel_A) * 0.45  # counts, as Dr. Probe users scale them


def test_reads_tiff_npy_hdf5_and_mrc(tmp_path: Path) -> None:
    import mrcfile

    img = np.arange(64 * 48, dtype=np.float32).reshape(64, 48)
    tifffile.imwrite(tmp_path / "a.tif", img)
    np.save(tmp_path / "b.npy", img)
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f["entry/stack"] = np.stack([img, img + 1])
        f["entry/small"] = np.zeros((4, 4))  # not an image
    with mrcfile.new(tmp_path / "d.mrc") as m:
        m.set_data(img)
    (tmp_path / "notes.txt").write_text("ignored")
    got = read_images(tmp_path)
    assert [n for n, _ in got] == ["a", "b", "c", "c[1]", "d"]
    assert all(a.shape == (64, 48) for _, a in got)
    np.testing.assert_array_equal(got[3][1], img + 1)


def test_evaluate_images_command_writes_table_and_figure(tmp_path: Path) -> None:
    src = tmp_path / "clean"
    src.mkdir()
    tifffile.imwrite(src / "frame.tif", _clean_at(0.048).astype(np.float32))  # the paper's TIFF sampling
    out = tmp_path / "out"
    res = CliRunner().invoke(
        app,
        [
            "evaluate-images",
            str(src),
            "--pixel-size",
            "0.048",
            "--resize",
            "0.8",
            "--draws",
            "2",
            "--out-dir",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads((out / "evaluate_images.json").read_text())
    assert abs(data["detector_pixel_A"] - 0.06) < 1e-9 and len(data["rows"]) == 2
    s = data["summary"]
    for region in ("whole", "support", "particle"):
        assert s[region]["sbd_mean"] > s[region]["low_pass_mean"] + 1.0, (region, s[region])
    for row in data["rows"]:  # the working pixel's ceiling: the clean frame binned and back, far above
        assert row["binning_ceiling"]["support"] > row["sbd"]["support"] + 5.0, row["binning_ceiling"]
    assert (out / "evaluate_images.png").stat().st_size > 10_000
    assert "| mean | SBD | low-pass |" in (out / "evaluate_images.md").read_text()
