"""Crafted zarr stores and EMD files (session 33's crash hunt): each is refused in one line before the
reader allocates or reads what the file merely declares.

- a chunk header declaring gigabytes (numcodecs LZ4 / Zstd / Blosc allocate it before decoding), a gzip /
  zlib / bz2 / lzma chunk that decodes to far more than its chunk (a decompression bomb): refused by
  ``sources/stack_zarr_guard.py`` before numcodecs decodes it; measured with ``tracemalloc`` (in a
  process of its own: ``helpers_memory``), which
  sees numcodecs' ``PyBytes`` allocations;
- a chunk or metadata file that is a FIFO (``denoise`` hung for ever) or a symlink to ``/dev/zero`` (read
  until memory ran out), a shard index pointing 1 GB into its 16 kB file: refused, the files by the CLI, in
  a process of its own under a memory limit;
- a store or an EMD file declaring 10^8 frames with a few stored: refused (it was days of blank frames).
"""

from __future__ import annotations

import json
import os
import re
import resource
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import h5py
import numcodecs
import numpy as np
import pytest
from helpers_memory import peak_reading

from sbd_stream.sources.stacks import StackError, open_stack

pytestmark = pytest.mark.integration
SBD = str(Path(sys.executable).parent / "sbd-stream")
FRAME = np.random.default_rng(0).poisson(1.0, (64, 64)).astype("<f4")
GB = 1024**3


def _v2(path: Path, chunks: dict[str, bytes], compressor: dict | None = None, **meta: object) -> Path:
    """A zarr v2 array of three 64 x 64 float32 frames, one a chunk, its ``.zarray`` and chunk files as
    given (written by hand: what a crafted store holds)."""
    path.mkdir()
    zarray = {"shape": [3, 64, 64], "chunks": [1, 64, 64], "dtype": "<f4", "fill_value": 0.0, "order": "C",
              "filters": None, "dimension_separator": ".", "compressor": compressor,
              "zarr_format": 2}  # fmt: skip
    (path / ".zarray").write_text(json.dumps({**zarray, **meta}))
    for key, data in chunks.items():
        (path / key).write_bytes(data)
    return path


def _zstd_frame(declared: int) -> bytes:
    """A Zstd frame header declaring ``declared`` bytes (8-byte content size), then an empty last block."""
    return struct.pack("<IB", 0xFD2FB528, 0xE0) + struct.pack("<Q", declared) + b"\x01\x00\x00"


def _blosc(declared: int) -> bytes:
    chunk = bytearray(numcodecs.Blosc(cname="lz4").encode(FRAME.tobytes()))
    struct.pack_into("<I", chunk, 4, declared)
    return bytes(chunk)


BLOSC = {"id": "blosc", "cname": "lz4", "clevel": 5, "shuffle": 1, "blocksize": 0}
BOMB = 64 * 1024**2  # zeros a bomb decodes to: 4096 times its 16 kB chunk


@pytest.mark.parametrize(
    ("compressor", "chunk"),
    [
        ({"id": "lz4", "acceleration": 1}, struct.pack("<i", GB) + bytes(8)),
        ({"id": "zstd", "level": 1}, _zstd_frame(GB)),
        (BLOSC, _blosc(GB)),
        ({"id": "zlib", "level": 9}, zlib.compress(bytes(BOMB), 9)),
        ({"id": "gzip", "level": 9}, numcodecs.GZip(9).encode(bytes(BOMB))),
        ({"id": "bz2", "level": 9}, numcodecs.BZ2(9).encode(bytes(BOMB))),
        ({"id": "lzma"}, numcodecs.LZMA().encode(bytes(BOMB))),
    ],
    ids=["lz4", "zstd", "blosc", "zlib-bomb", "gzip-bomb", "bz2-bomb", "lzma-bomb"],
)
def test_chunk_declaring_more_than_its_chunk_is_refused_before_decoding(
    compressor: dict, chunk: bytes, tmp_path: Path
) -> None:
    store = _v2(tmp_path / "x.zarr", {"0.0.0": chunk, "1.0.0": chunk, "2.0.0": chunk}, compressor)
    error, peak = peak_reading(store, 0, 1)
    assert re.search(r"frames .*(declares|decodes to more)", error), error
    assert "\n" not in error
    assert peak < 16 * 1024**2, f"{peak} bytes allocated for a 16 kB chunk"


def test_store_declaring_far_more_frames_than_it_holds_is_refused(tmp_path: Path) -> None:
    raw = FRAME.tobytes()
    store = _v2(tmp_path / "x.zarr", {"0.0.0": raw, "1.0.0": raw, "2.0.0": raw}, shape=[10**8, 64, 64])
    with pytest.raises(StackError, match="declares 100000000 frames but holds chunk files for at most 3"):
        open_stack(store)
    sparse = _v2(tmp_path / "sparse.zarr", {"0.0.0": raw, "2.0.0": raw})  # frame 1 all fill: zarr's own
    np.testing.assert_array_equal(open_stack(sparse).frames[0:3][1], 0)


def _velox_declaring(path: Path, frames: int) -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset("Data/Image/abc/Data", shape=(64, 64, frames), dtype="u2", chunks=(64, 64, 1))
        f["Data/Image/abc/Data"][:, :, :3] = 1
    return path


def test_emd_declaring_far_more_frames_than_it_stores_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="declares 409600000000 pixels but the file stores 12288"):
        open_stack(_velox_declaring(tmp_path / "x.emd", 10**8))
    assert open_stack(_velox_declaring(tmp_path / "ok.emd", 3)).shape == (3, 64, 64)


def test_emd_metadata_in_external_storage_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.emd"
    with h5py.File(path, "w") as f:
        f.create_dataset("Data/Image/abc/Data", data=np.ones((64, 64, 3), "u2"))
        f.create_dataset(
            "Data/Image/abc/Metadata", shape=(100, 3), dtype="u1", external=[("/dev/zero", 0, 300)]
        )
    with pytest.raises(StackError, match="Metadata: its data is kept outside the file"):
        open_stack(path)


def test_velox_metadata_nested_too_deep_states_no_pixel_size(tmp_path: Path) -> None:
    """JSON 10^5 arrays deep: RecursionError, a RuntimeError, read as 'not a readable HDF5 file'."""
    path = tmp_path / "x.emd"
    text = np.frombuffer(b"[" * 100000 + b"]" * 100000, np.uint8)
    with h5py.File(path, "w") as f:
        f.create_dataset("Data/Image/abc/Data", data=np.ones((64, 64, 3), "u2"))
        f.create_dataset("Data/Image/abc/Metadata", data=np.repeat(text[:, None], 3, axis=1))
    assert open_stack(path).sampling == {}


def _fifo_chunk(store: Path) -> None:
    os.mkfifo(store / "0.0.0")


def _zero_chunk(store: Path) -> None:
    (store / "0.0.0").symlink_to("/dev/zero")


def _zero_attrs(store: Path) -> None:
    (store / ".zattrs").symlink_to("/dev/zero")


def _sparse_chunk(store: Path) -> None:
    with open(store / "0.0.0", "wb") as f:
        f.truncate(50 * GB)  # sparse: no disk used


def test_shard_index_past_its_file_is_refused_before_reading(tmp_path: Path) -> None:
    """A v3 store of one shard whose index gives its inner chunks 1 GB each of a 16 kB file: reading one
    frame read that range (Python allocates the bytes asked for before reading)."""
    store = tmp_path / "x.zarr"
    store.mkdir()
    meta = {"shape": [3, 64, 64], "data_type": "float32", "zarr_format": 3, "node_type": "array",
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [3, 64, 64]}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}}, "fill_value": 0.0,
            "codecs": [{"name": "sharding_indexed", "configuration": {
                "chunk_shape": [1, 64, 64],
                "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
                "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}]}}]}  # fmt: skip
    (store / "zarr.json").write_text(json.dumps(meta))
    (store / "c/0/0").mkdir(parents=True)
    (store / "c/0/0/0").write_bytes(FRAME.tobytes() + struct.pack("<QQ", 0, GB) * 3)
    error, peak = peak_reading(store, 0, 1)
    assert "bytes 0 to 1073741824 asked of a 16432-byte file" in error
    assert peak < 16 * 1024**2, f"{peak} bytes allocated for a 16 kB shard"


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (6 * GB, 6 * GB))  # /dev/zero read whole: MemoryError, no swap


@pytest.mark.parametrize(
    ("craft", "said"),
    [
        (_fifo_chunk, "0.0.0: not a regular file"),
        (_zero_chunk, "0.0.0: not a regular file"),
        (_zero_attrs, ".zattrs: not a regular file"),
        (_sparse_chunk, "0.0.0: over 82944 bytes"),
    ],
    ids=["fifo-chunk", "dev-zero-chunk", "dev-zero-attrs", "50GB-chunk"],
)
def test_store_file_that_is_no_chunk_is_one_error(
    craft, said: str, tiny_engine_dir: Path, tmp_path: Path
) -> None:
    raw = FRAME.tobytes()
    store = _v2(tmp_path / "x.zarr", {"1.0.0": raw, "2.0.0": raw})
    craft(store)
    try:
        res = subprocess.run(
            [SBD, "denoise", str(store), str(tmp_path / "out.h5"), "--model", str(tiny_engine_dir),
             "--engine", "torch", "--orientations", "1", "--scheduler", "none", "--pixel-size", "0.3"],
            capture_output=True, text=True, timeout=300, cwd=tmp_path, preexec_fn=_limit_memory,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("denoise hung on the store")  # a FIFO chunk: blocked in open() for ever
    assert res.returncode >= 0, f"killed by signal {-res.returncode}: {res.stderr[-400:]}"
    assert res.returncode == 2, res.stderr[-800:]
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and said in errors[0], res.stderr[-800:]
    assert "Traceback" not in res.stderr and "MemoryError" not in res.stderr
