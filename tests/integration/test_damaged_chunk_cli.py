"""A crafted bitshuffle-LZ4 or LZ4 chunk in an HDF5 stack or a recording: `denoise`, `export` and
`replay --offline` end with one error line naming the chunk, never with a signal.

Why (session 32): the hdf5plugin filters decompress with LZ4's unchecked decoder and trust the block
sizes in the chunk; a first block declaring 2 GB made `denoise FILE.h5`, `export` and `replay
--offline` of a recording die with SIGSEGV (exit -11 / 139); an LZ4 block declared "stored" longer
than the chunk was copied from the heap beyond it into the frame (exit 0, garbage denoised).
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import pytest
from crafted_files import leap, small_recorder

from sbd_stream.sinks.recorder import RecordItem

pytestmark = pytest.mark.integration
SBD = str(Path(sys.executable).parent / "sbd-stream")


def _stored_overrun(chunk: bytes) -> bytes:
    """H5Z-LZ4: one block marked stored (its size = the block's), its bytes missing: memcpy past it."""
    total, block = struct.unpack_from(">QI", chunk)
    return struct.pack(">QII", total, block, block)


def _stack(path: Path, comp: dict, craft, shape: tuple[int, int], dtype: str) -> Path:
    a = np.random.default_rng(0).poisson(3.0, (3, *shape)).astype(dtype)
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("frames", data=a, chunks=(1, *shape), **comp)
        ds.id.write_direct_chunk((1, 0, 0), craft(ds.id.read_direct_chunk((1, 0, 0))[1]))
    return path


def _recording(directory: Path) -> Path:
    """A recording by the real Recorder (bitshuffle-LZ4, one frame a chunk), raw frame 2 crafted."""
    rec = small_recorder(directory)
    rec.write(RecordItem("series_start", "run/9"))
    rng = np.random.default_rng(5)
    for q in range(5):
        rec.write(
            RecordItem("raw", "run/9", q, 100.0 + 0.025 * q, rng.poisson(0.45, (256, 256)).astype("u2"))
        )
    rec.write(RecordItem("series_end", "run/9"))
    path = directory / "run_9.nxs"
    with h5py.File(path, "r+") as f:
        ds = f["raw/frames"]
        ds.id.write_direct_chunk((2, 0, 0), leap(ds.id.read_direct_chunk((2, 0, 0))[1]))
    return path


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([SBD, *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def _one_error(res: subprocess.CompletedProcess, *words: str) -> None:
    assert res.returncode >= 0, f"killed by signal {-res.returncode}: {res.stderr[-400:]}"
    assert res.returncode == 2, res.stderr[-800:]
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, res.stderr[-800:]
    assert "cannot be decoded" in errors[0] and "damaged?" in errors[0], errors[0]
    for w in words:
        assert w in errors[0], errors[0]
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize(
    ("comp", "craft", "shape", "dtype"),
    [
        (hdf5plugin.Bitshuffle(cname="lz4"), leap, (256, 256), "float32"),
        (hdf5plugin.LZ4(), _stored_overrun, (2048, 2048), "float32"),
    ],
    ids=["bitshuffle-lz4", "lz4"],
)
def test_denoise_of_a_crafted_chunk_is_one_error(
    comp: dict, craft, shape: tuple, dtype: str, tiny_engine_dir: Path, tmp_path: Path
) -> None:
    inp = _stack(tmp_path / "in.h5", comp, craft, shape, dtype)
    res = _run(
        "denoise", str(inp), str(tmp_path / "out.h5"), "--model", str(tiny_engine_dir), "--engine", "torch",
        "--orientations", "1", "--scheduler", "none", cwd=tmp_path,
    )  # fmt: skip
    _one_error(res, "in.h5:frames", "frame 1", "chunk (1, 0, 0)")
    assert not (tmp_path / "out.h5").exists()


def test_export_and_replay_offline_of_a_crafted_recording_are_one_error(
    tiny_engine_dir: Path, tmp_path: Path
) -> None:
    rec = _recording(tmp_path / "rec")
    res = _run(
        "export", str(rec), "--kind", "raw", "--to", "npy", "--out", str(tmp_path / "x.npy"), cwd=tmp_path
    )
    _one_error(res, "run_9.nxs", "chunk (2, 0, 0)")
    res = _run(
        "replay", str(rec), "--offline", "--out", str(tmp_path / "r.h5"), "--model", str(tiny_engine_dir),
        "--engine", "torch", "--scheduler", "none", cwd=tmp_path,
    )  # fmt: skip
    _one_error(res, "run_9.nxs:raw/frames", "chunk (2, 0, 0)")


def test_live_replay_of_a_crafted_recording_is_one_error(tiny_engine_dir: Path, tmp_path: Path) -> None:
    """Live ``replay`` (the pipeline, not ``--offline``) read raw frames through the filter: SIGSEGV."""
    rec = _recording(tmp_path / "rec")
    res = _run(
        "replay", str(rec), "--record-dir", str(tmp_path / "out"), "--model", str(tiny_engine_dir),
        "--engine", "torch", cwd=tmp_path,
    )  # fmt: skip
    _one_error(res, "run_9.nxs:raw/frames", "chunk (2, 0, 0)")
