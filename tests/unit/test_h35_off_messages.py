"""Two lines a user reads first (audit h35): the offline sampling warning says only what is assumed (D3),
and ``evaluate-images``' console row says ``n/a`` for a region the image lacks, as the markdown does (D4)."""

from __future__ import annotations

import math

from sbd_stream.service.offline_plan import unstated
from training.evaluate.images import _line


def test_a_given_pixel_size_is_not_called_the_paper_s_k2_sampling() -> None:
    said = unstated({}, {"pixel_size_A": 0.03})  # only the dose is the paper's
    assert said is not None and "the paper's dose (125 e/A^2 per frame) is assumed" in said
    assert "K2" not in said and "--dose / --counts-per-px" in said and "--pixel-size" not in said


def test_the_other_variants_name_what_is_assumed() -> None:
    both = unstated({}, None)
    assert both is not None and "the paper's K2 sampling (0.060 A, 125 e/A^2 per frame) is assumed" in both
    assert "the pixel size (--pixel-size) or the dose (--dose / --counts-per-px)" in both
    pixel = unstated({"counts_per_px": 0.45}, None)
    assert pixel is not None and pixel.endswith("the paper's K2 pixel size (0.060 A) is assumed")
    assert "dose" not in pixel
    assert unstated({"pixel_size_A": 0.06}, {"dose_e_per_A2": 125.0}) is None


def test_the_console_row_says_n_a_for_an_absent_region() -> None:
    nan = math.nan
    row = {
        "image": "vacuum.npy",
        "draw": 0,
        "sbd": {"whole": 35.9, "vacuum": 35.9, "support": nan, "particle": nan},
        "low_pass_oracle": {"whole": {"paper_psnr": 31.2}, "support": {"paper_psnr": nan}},
    }
    line = _line(row)
    assert "nan" not in line
    assert "support    n/a /    n/a" in line and "particle    n/a /    n/a" in line
    assert "whole  35.90 /  31.20" in line


def test_denoise_help_says_the_output_needs_hdf5plugin() -> None:
    """D2: plain h5py failed on the output's bitshuffle-LZ4 frames with a cryptic plugin error."""
    from typer.testing import CliRunner

    from sbd_stream.cli import app

    res = CliRunner().invoke(app, ["denoise", "--help"], env={"COLUMNS": "300", "NO_COLOR": "1"})
    assert res.exit_code == 0
    said = " ".join(res.output.split())
    assert "read it with `import hdf5plugin` before h5py" in said and "bitshuffle-LZ4" in said
    assert "--compression" in said  # session 36: gzip / none for readers without hdf5plugin
