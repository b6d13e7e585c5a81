"""Mutation round of session 32 on ``formats/safe_chunks.py``: what ``test_safe_chunks_read.py`` left open.

Why: each test here kills a hand-made mutant that the first tests let live (the report of the round,
session 32): a chunked dataset with no filter at all, bitshuffle's block size from the filter's settings
(only read for uncompressed bitshuffle: bslz4 chunks carry theirs), an unfiltered chunk longer than a
chunk, an index one past the end, a boolean mask, a dataset that grows while it is read (SWMR), and the
virtual datasets of one file or over a refused source. Each is compared with h5py or must be refused.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import pytest

from sbd_stream.formats.safe_chunks import SafeChunks, UnsafeChunks, safe_dataset


def test_a_chunked_dataset_without_filters_stays_with_h5py(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "x.h5", "w") as f:
        ds = f.create_dataset("frames", data=np.ones((3, 8, 8), "u2"), chunks=(1, 8, 8))
        assert safe_dataset(ds) is ds


@pytest.mark.parametrize("nelems", [8, 64, 256, 1000])
@pytest.mark.parametrize("dtype", ["u1", ">u2", "<f4", "f8"])
def test_uncompressed_bitshuffle_with_its_own_block_reads_as_h5py(
    nelems: int, dtype: str, tmp_path: Path
) -> None:
    """The block (elements bit-transposed together) comes from the filter's settings, not its default."""
    a = np.random.default_rng(1).poisson(40.0, (3, 40, 50)).astype(dtype)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        comp = hdf5plugin.Bitshuffle(nelems=nelems, cname="none")
        ds = f.create_dataset("frames", data=a, chunks=(1, 40, 50), **comp)
        safe = safe_dataset(ds)
        assert isinstance(safe, SafeChunks)
        np.testing.assert_array_equal(safe[:], ds[:])
        np.testing.assert_array_equal(safe[1], a[1])


@pytest.mark.parametrize("extra", [-2, 2, 400])
def test_an_unfiltered_chunk_of_another_length_is_one_error(extra: int, tmp_path: Path) -> None:
    """A chunk stored with the filter skipped must be exactly a chunk's bytes: longer is damage too."""
    with h5py.File(tmp_path / "x.h5", "w") as f:
        ds = f.create_dataset("frames", shape=(2, 20, 20), chunks=(1, 20, 20), dtype="u2", **hdf5plugin.LZ4())
        ds[0] = 1
        blob = np.arange(400, dtype="u2").tobytes()
        blob = blob[:extra] if extra < 0 else blob + b"\x01" * extra
        ds.id.write_direct_chunk((1, 0, 0), blob, filter_mask=1)
        safe = safe_dataset(ds)
        np.testing.assert_array_equal(safe[0], np.ones((20, 20), "u2"))
        with pytest.raises(UnsafeChunks, match=r"^chunk \(1, 0, 0\) cannot be decoded: "):
            safe[1]


def test_an_index_past_either_end_is_an_index_error_as_in_h5py(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "x.h5", "w") as f:
        ds = f.create_dataset("frames", data=np.ones((5, 8, 8), "u2"), chunks=(1, 8, 8), **hdf5plugin.LZ4())
        safe = safe_dataset(ds)
        for index in (5, -6, (0, 8), (0, 0, -9)):
            with pytest.raises(IndexError):
                ds[index]
            with pytest.raises(IndexError):
                safe[index]
        with pytest.raises(IndexError):  # h5py: an OSError from libhdf5 ("not within extent")
            safe[[0, 5]]


def test_a_boolean_mask_selects_as_in_h5py(tmp_path: Path) -> None:
    a = np.arange(5 * 6 * 7, dtype="u2").reshape(5, 6, 7)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        ds = f.create_dataset("frames", data=a, chunks=(2, 4, 7), **hdf5plugin.Bitshuffle(cname="lz4"))
        safe = safe_dataset(ds)
        for mask in ([True, False, True, True, False], [False] * 4 + [True]):
            np.testing.assert_array_equal(safe[np.array(mask)], ds[np.array(mask)])
        cols = np.array([False, True, False, False, True, True, False])
        np.testing.assert_array_equal(safe[:, :, cols], ds[:, :, cols])
        for sel in (cols, [0, 2, 3]):  # an integer and a list apart: numpy would put the list's axis first
            np.testing.assert_array_equal(safe[1, :, sel], ds[1, :, sel])
            np.testing.assert_array_equal(safe[1, 0:4, sel], ds[1, 0:4, sel])
        assert safe[1, :, [0, 2, 3]].shape == (6, 3)
        np.testing.assert_array_equal(safe[[0, 2], :, 3], ds[[0, 2], :, 3])
        assert safe[1, 2, 3] == ds[1, 2, 3]


def test_bool_frames_compressed_read_as_in_h5py(tmp_path: Path) -> None:
    """Masks stored bitshuffle-LZ4 were refused as 'counts only' although the checked decoder reads
    their bytes exactly (h5py read them before the checked read came)."""
    a = np.random.default_rng(1).random((3, 16, 24)) > 0.5
    with h5py.File(tmp_path / "b.h5", "w") as f:
        for name, comp in (("bs", hdf5plugin.Bitshuffle(cname="lz4")), ("lz", hdf5plugin.LZ4())):
            ds = f.create_dataset(name, data=a, chunks=(1, 16, 24), **comp)
            np.testing.assert_array_equal(safe_dataset(ds)[:], a)


def test_a_dataset_that_grows_is_read_to_its_current_length(tmp_path: Path) -> None:
    """A live recording's frames grow under a reader (SWMR): the shape is the dataset's as it is now."""
    with h5py.File(tmp_path / "x.h5", "w") as f:
        ds = f.create_dataset(
            "frames", shape=(2, 8, 8), maxshape=(None, 8, 8), chunks=(1, 8, 8), dtype="u2",
            **hdf5plugin.Bitshuffle(cname="lz4"),
        )  # fmt: skip
        ds[:] = 1
        safe = safe_dataset(ds)
        assert len(safe) == 2
        ds.resize(3, axis=0)
        ds[2] = 7
        assert len(safe) == 3 and safe.shape == (3, 8, 8)
        np.testing.assert_array_equal(safe[-1], np.full((8, 8), 7, "u2"))
        np.testing.assert_array_equal(safe[:], ds[:])


def test_a_virtual_dataset_over_its_own_file_or_a_refused_source_is_refused(tmp_path: Path) -> None:
    """A source in the same file (HDF5's ".") is looked at as any other; a source whose filter is refused
    names it, through the virtual dataset."""
    lay = h5py.VirtualLayout((2, 16, 16), "u2")
    lay[:] = h5py.VirtualSource(".", "data", shape=(2, 16, 16))
    with h5py.File(tmp_path / "one.h5", "w") as f:
        f.create_dataset("data", data=np.ones((2, 16, 16), "u2"), chunks=(1, 16, 16), **hdf5plugin.LZ4())
        f.create_virtual_dataset("frames", lay)
    with h5py.File(tmp_path / "one.h5", "r") as f, pytest.raises(UnsafeChunks, match=r"one.h5:data is lz4"):
        safe_dataset(f["frames"])
    with h5py.File(tmp_path / "zstd.h5", "w") as f:
        f.create_dataset("data", data=np.ones((2, 16, 16), "u2"), chunks=(1, 16, 16), **hdf5plugin.Zstd())
    lay = h5py.VirtualLayout((2, 16, 16), "u2")
    lay[:] = h5py.VirtualSource("zstd.h5", "data", shape=(2, 16, 16))
    with h5py.File(tmp_path / "master.h5", "w") as f:
        f.create_virtual_dataset("frames", lay)
    refused = r"^its virtual source zstd.h5:data: .*Zstd HDF5 filter"
    with h5py.File(tmp_path / "master.h5", "r") as f, pytest.raises(UnsafeChunks, match=refused):
        safe_dataset(f["frames"])


def test_complex128_frames_compressed_with_bitshuffle_are_refused_in_one_line(tmp_path: Path) -> None:
    """16-byte elements: the checked decoder has no such unsigned type (it would raise a TypeError, no
    one-line error), so they are refused before any read."""
    a = np.ones((2, 8, 8), "c16")
    with h5py.File(tmp_path / "x.h5", "w") as f:
        ds = f.create_dataset("frames", data=a, chunks=(1, 8, 8), **hdf5plugin.Bitshuffle(cname="lz4"))
        with pytest.raises(UnsafeChunks, match=r"^its complex128 frames are compressed with filter 32008"):
            safe_dataset(ds)


@pytest.mark.parametrize("index", [slice(1, 3), slice(3, 5), [1, 2], (slice(1, 3), 4), slice(2, 4)])
def test_a_chunk_sized_selection_off_the_chunk_grid_reads_as_in_h5py(index: object, tmp_path: Path) -> None:
    """Frames [1, 3) of 2-frame chunks span two chunks although they are one chunk long."""
    a = np.arange(6 * 8 * 8, dtype="u2").reshape(6, 8, 8)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        ds = f.create_dataset("frames", data=a, chunks=(2, 8, 8), **hdf5plugin.Bitshuffle(cname="lz4"))
        np.testing.assert_array_equal(safe_dataset(ds)[index], ds[index])


@pytest.mark.parametrize("dtype", ["<u2", ">f8"])
def test_lz4_blocks_of_an_odd_byte_count_read_as_in_h5py(dtype: str, tmp_path: Path) -> None:
    """H5Z-LZ4's block is in bytes: a block that splits an element is valid (bslz4's is in elements)."""
    a = np.random.default_rng(2).poisson(9.0, (2, 30, 40)).astype(dtype)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        ds = f.create_dataset("frames", data=a, chunks=(1, 30, 40), **hdf5plugin.LZ4(nbytes=1001))
        np.testing.assert_array_equal(safe_dataset(ds)[:], ds[:])


def test_negative_indices_in_a_list_select_as_in_h5py(tmp_path: Path) -> None:
    a = np.arange(7 * 4 * 4, dtype="u2").reshape(7, 4, 4)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        ds = f.create_dataset("frames", data=a, chunks=(2, 4, 4), **hdf5plugin.LZ4())
        safe = safe_dataset(ds)
        for index in ([1, -2], [-3, -2], (0, [0, -1])):
            np.testing.assert_array_equal(safe[index], ds[index])
