"""bench_binning: a named --clean file must exist, and quality is judged on the specimen, not vacuum."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks import bench_binning


def test_a_missing_clean_file_is_refused_before_any_measuring(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_speed(*_a: object) -> None:
        raise AssertionError("measured speed for a run that must be refused")

    monkeypatch.setattr(bench_binning, "speed", no_speed)
    monkeypatch.setenv("SBD_BENCH_RESULTS", str(tmp_path))
    with pytest.raises(SystemExit) as e:
        bench_binning.main(["--clean", str(tmp_path / "absent.h5")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "absent.h5" in err and len(err.splitlines()) == 1
    assert not list(tmp_path.iterdir())  # no results file labelled with the missing file's name


def test_the_crop_follows_the_specimen_not_a_corner() -> None:
    """The detector world's support lies along the bottom edge: a corner, or the centre, is vacuum."""
    frame = np.ones((256, 256), np.float32)
    frame[200:240, 100:160] = 1.5  # the specimen, low in the frame
    crop = bench_binning.specimen_crop(frame, 64)
    assert crop.shape == (64, 64)
    assert (crop != 1).mean() > 0.5
    assert bench_binning.specimen_crop(np.ones((32, 32)), 64).shape == (32, 32)  # larger than the frame


def test_frames_no_larger_than_the_window_are_kept_whole() -> None:
    frame = np.random.default_rng(0).random((128, 128)).astype(np.float32)
    np.testing.assert_array_equal(bench_binning.specimen_crop(frame, 128), frame)
