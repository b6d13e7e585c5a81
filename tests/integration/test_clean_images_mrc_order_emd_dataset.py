"""``evaluate-images`` reads files as ``denoise`` does: an MRC's axis order and ``--dataset`` for EMD.

Why: the folder reader kept its own MRC branch, which read the data in stored order, so a file whose
header says ``mapc, mapr, maps = 2, 1, 3`` was scored transposed against how ``denoise`` (and ChimeraX)
have it, and a volume in another axis order was scored as slices across X. ``--dataset`` was not passed
to EMD / zarr files, so a Velox file of several images was skipped while its reason said to use it."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest
from test_stack_emd_velox_berkeley import write_velox

from training.evaluate.clean_images import Unusable, read_file

IMG = np.arange(48 * 40, dtype=np.float32).reshape(48, 40) / 100.0


def _mrc(path: Path, data: np.ndarray, order: tuple[int, int, int]) -> Path:
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(data)
        m.header.mapc, m.header.mapr, m.header.maps = order
    return path


def test_a_transposed_mrc_is_scored_as_its_header_has_it(tmp_path: Path) -> None:
    (img,) = read_file(_mrc(tmp_path / "t.mrc", IMG, (2, 1, 3)))
    np.testing.assert_array_equal(img, IMG.T)  # columns along Y: the image is the stored one transposed
    (same,) = read_file(_mrc(tmp_path / "s.mrc", IMG, (1, 2, 3)))
    np.testing.assert_array_equal(same, IMG)


def test_sections_across_x_are_refused(tmp_path: Path) -> None:
    with pytest.raises(Unusable):
        read_file(_mrc(tmp_path / "v.mrc", np.stack([IMG, IMG]), (3, 2, 1)))


def test_dataset_picks_one_image_of_a_velox_file(tmp_path: Path) -> None:
    frames = np.stack([IMG, IMG + 1.0])
    path = write_velox(tmp_path / "two.emd", frames, uuids=("aa", "bb"))
    with pytest.raises(Unusable, match="--dataset"):
        read_file(path)
    picked = read_file(path, "Data/Image/bb/Data")
    assert len(picked) == 2
    np.testing.assert_array_equal(picked[1], IMG + 1.0)
