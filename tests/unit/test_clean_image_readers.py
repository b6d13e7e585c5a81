"""``sbd-train evaluate-images`` reads clean images from the files users bring: IMOD's unsigned 8-bit MRC
(mode 0 with IMOD's stamp, ``imodFlags`` bit 0 clear) as 0-255, and every float image dataset of an
HDF5 file (audit 27, mutants CI1 and CI3: a signed read of the bytes and a read of the first dataset
only both passed the reader's tests)."""

from __future__ import annotations

import struct
from pathlib import Path

import h5py
import numpy as np

from training.evaluate.clean_images import read_file

IMOD_STAMP = 1146047817  # "IMOD", bytes 152-155 of the header


def _mrc_mode0(path: Path, data: np.ndarray, imod_flags: int | None) -> Path:
    """A mode-0 MRC2014 file written byte by byte: 1024-byte header, then the bytes of ``data``;
    ``imod_flags`` None: no IMOD stamp (a plain MRC2014 writer's file)."""
    ny, nx = data.shape
    head = bytearray(1024)
    struct.pack_into("<4i", head, 0, nx, ny, 1, 0)  # nx, ny, nz, mode 0 (8-bit)
    struct.pack_into("<3i", head, 28, nx, ny, 1)  # mx, my, mz
    struct.pack_into("<6f", head, 40, nx, ny, 1.0, 90.0, 90.0, 90.0)  # cell (A), angles
    struct.pack_into("<3i", head, 64, 1, 2, 3)  # mapc, mapr, maps
    struct.pack_into("<3f", head, 76, float(data.min()), float(data.max()), float(data.mean()))
    struct.pack_into("<i", head, 108, 20140)  # nversion
    if imod_flags is not None:
        struct.pack_into("<2i", head, 152, IMOD_STAMP, imod_flags)
    head[208:212] = b"MAP "
    head[212:216] = bytes([0x44, 0x44, 0, 0])  # little-endian
    path.write_bytes(bytes(head) + np.ascontiguousarray(data, np.uint8).tobytes())
    return path


def test_imod_unsigned_mode0_bytes_read_as_0_to_255(tmp_path: Path) -> None:
    u8 = np.random.default_rng(1).integers(0, 256, (48, 40), dtype=np.uint8)
    u8[0, :4] = (0, 127, 128, 255)
    (img,) = read_file(_mrc_mode0(tmp_path / "imod.mrc", u8, imod_flags=0))
    np.testing.assert_array_equal(img, u8)
    assert img.min() >= 0 and img.max() == 255
    # bit 0 set: IMOD says the bytes are signed; no stamp: MRC2014's mode 0 is signed
    for name, flags in (("signed.mrc", 1), ("plain.mrc", None)):
        (img,) = read_file(_mrc_mode0(tmp_path / name, u8, imod_flags=flags))
        np.testing.assert_array_equal(img, u8.view(np.int8))


def test_every_float_image_dataset_of_an_hdf5_file_is_read(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    a, b = rng.uniform(0.5, 1.5, (2, 64, 64)).astype(np.float32)
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["defocus_0"] = a
        f["series/defocus_5"] = b
        f["positions"] = rng.uniform(0, 1, (10, 2)).astype(np.float32)  # not an image: too small a side
        f["labels"] = np.zeros((64, 64), np.int32)  # not clean intensities: integers
    images = read_file(tmp_path / "two.h5")
    assert len(images) == 2
    np.testing.assert_array_equal(images[0], a)
    np.testing.assert_array_equal(images[1], b)
