"""HDF5 frames read without the decompressors that crash on a damaged chunk (formats/safe_chunks.py):
h5py's own result on valid files, one ``UnsafeChunks`` on damaged ones, a refusal naming a filter
whose decoder crashed, hung or returned garbage in the survey of session 32.

Why: a crafted bitshuffle-LZ4 or LZ4 chunk in a recording or any ``.h5`` killed ``denoise``,
``replay --offline`` and ``export`` with SIGSEGV inside the hdf5plugin filters.
"""

from __future__ import annotations

import struct
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import pytest

from sbd_stream.formats.safe_chunks import SafeChunks, UnsafeChunks, safe_dataset

FILTERS = {
    "bslz4": hdf5plugin.Bitshuffle(cname="lz4"),
    "bslz4-256": hdf5plugin.Bitshuffle(nelems=256, cname="lz4"),
    "bitshuffle": hdf5plugin.Bitshuffle(cname="none"),
    "lz4": hdf5plugin.LZ4(),
    "lz4-1000": hdf5plugin.LZ4(nbytes=1000),
}
LAYOUTS = [  # (shape, chunks): one frame a chunk, several, tiles with partial edge chunks
    ((5, 37, 29), (1, 37, 29)),
    ((7, 33, 50), (3, 33, 50)),
    ((5, 37, 29), (2, 16, 10)),
    ((4, 64, 64), (1, 8, 64)),
]
SELECTIONS = [
    (), 0, -1, slice(1, 3), (slice(None), 5), (2, slice(3, 20, 3), slice(None, None, 2)),
    (Ellipsis, 4), [0, 2, 3], (1, 2, 3), slice(3, 1), (slice(0, 5, 2), 7),
]  # fmt: skip


@pytest.mark.parametrize("name", list(FILTERS))
@pytest.mark.parametrize("dtype", ["uint8", "<u2", ">u2", "<f4", ">f4", "int32", "float64"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_valid_files_read_as_h5py_reads_them(name: str, dtype: str, layout: tuple, tmp_path: Path) -> None:
    shape, chunks = layout
    a = (np.random.default_rng(3).poisson(5.0, shape) * (1.5 if "f" in dtype else 1)).astype(dtype)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        ds = f.create_dataset("frames", data=a, chunks=chunks, **FILTERS[name])
        safe = safe_dataset(ds)
        assert isinstance(safe, SafeChunks)
        for sel in SELECTIONS:
            want, got = ds[sel], safe[sel]
            assert np.asarray(got).dtype == np.asarray(want).dtype, sel
            assert np.shape(got) == np.shape(want) and np.array_equal(got, want), sel
            assert not isinstance(got, np.ndarray) or got.flags.writeable, sel  # as h5py's: torch wants it


def test_unwritten_chunks_and_unfiltered_chunks(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "x.h5", "w") as f:
        comp = hdf5plugin.Bitshuffle(cname="lz4")
        ds = f.create_dataset(
            "frames", shape=(4, 20, 20), chunks=(1, 20, 20), dtype="u2", fillvalue=9, **comp
        )
        ds[1] = 3  # frames 0, 2, 3: never written, the fill value
        raw = np.arange(400, dtype="u2").reshape(20, 20)
        ds.id.write_direct_chunk((2, 0, 0), raw.tobytes(), filter_mask=1)  # stored with the filter skipped
        assert np.array_equal(safe_dataset(ds)[:], ds[:])
        assert np.array_equal(safe_dataset(ds)[2], raw)


def test_plain_and_gzip_datasets_stay_with_h5py(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "x.h5", "w") as f:
        a = np.ones((2, 8, 8), "u2")
        plain = f.create_dataset("plain", data=a)
        gz = f.create_dataset("gz", data=a, chunks=(1, 8, 8), compression="gzip", shuffle=True)
        assert safe_dataset(plain) is plain and safe_dataset(gz) is gz


def _damaged(path: Path, name: str, damage: str) -> h5py.Dataset:
    a = np.random.default_rng(0).poisson(3.0, (3, 128, 128)).astype("uint16")
    f = h5py.File(path, "w")
    ds = f.create_dataset("frames", data=a, chunks=(1, 128, 128), **FILTERS[name])
    _mask, chunk = ds.id.read_direct_chunk((1, 0, 0))
    c = bytearray(chunk)
    if damage == "leap":  # the first block declares 2 GB: the filter read the next block 2 GB away
        struct.pack_into(">I", c, 12, 0x7FFFFFF0)
    elif damage == "cut":
        c = c[: len(c) // 2]
    else:  # flipped bytes in every block
        for i in range(16, len(c), 97):
            c[i] ^= 0x5A
    ds.id.write_direct_chunk((1, 0, 0), bytes(c))
    return ds


@pytest.mark.parametrize("name", ["bslz4", "lz4", "bitshuffle"])
@pytest.mark.parametrize("damage", ["leap", "cut", "flips"])
def test_a_damaged_chunk_is_one_error_naming_it(name: str, damage: str, tmp_path: Path) -> None:
    ds = _damaged(tmp_path / "x.h5", name, damage)
    try:
        safe = safe_dataset(ds)
        assert np.array_equal(safe[0], ds[0])  # the frames around it still read
        if name == "bitshuffle" and damage != "cut":  # no compression: flipped bits are data, not damage
            safe[1]
            return
        with pytest.raises(UnsafeChunks, match=r"^chunk \(1, 0, 0\) cannot be decoded: "):
            safe[1]
        with pytest.raises(UnsafeChunks):
            safe[0:3]
    finally:
        ds.file.close()


@pytest.mark.parametrize(
    ("comp", "named"),
    [
        (hdf5plugin.Zstd(), "Zstd"),
        (hdf5plugin.BZip2(), "BZip2"),
        (hdf5plugin.Bitshuffle(cname="zstd"), "zstd"),
        ({**hdf5plugin.Bitshuffle(cname="lz4"), "fletcher32": True}, "bitshuffle / LZ4 with others"),
        ({**hdf5plugin.LZ4(), "shuffle": True}, "bitshuffle / LZ4 with others"),
    ],
)
def test_a_filter_that_crashes_is_refused_by_name(comp: dict, named: str, tmp_path: Path) -> None:
    with h5py.File(tmp_path / "x.h5", "w") as f:
        ds = f.create_dataset("frames", data=np.ones((2, 16, 16), "u2"), chunks=(1, 16, 16), **comp)
        with pytest.raises(UnsafeChunks, match=named):
            safe_dataset(ds)


def test_a_virtual_dataset_over_bitshuffle_lz4_sources_is_refused(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "data.h5", "w") as f:
        f.create_dataset("data", data=np.ones((2, 16, 16), "u2"), chunks=(1, 16, 16), **FILTERS["bslz4"])
    layout = h5py.VirtualLayout((2, 16, 16), "u2")
    layout[:] = h5py.VirtualSource("data.h5", "data", shape=(2, 16, 16))
    with h5py.File(tmp_path / "master.h5", "w") as f:
        ds = f.create_virtual_dataset("frames", layout)
        with pytest.raises(UnsafeChunks, match=r"data.h5:data is bslz4-compressed"):
            safe_dataset(ds)
