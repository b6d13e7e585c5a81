"""A crafted bitshuffle-LZ4 chunk in an EMD file's metadata (a Velox ``Metadata`` column, a Berkeley
``dimN`` axis vector): ``denoise FILE.emd`` ends with one error line naming the dataset, never a signal.

Why (session 32): the frames were read through ``formats/safe_chunks.py``, but ``stack_emd.py`` read the
metadata through the hdf5plugin filter, whose unchecked LZ4 decoder trusted a block declaring 2 GB: the
process died with SIGSEGV (exit -11) on both layouts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import pytest
from crafted_files import leap

pytestmark = pytest.mark.integration
SBD = str(Path(sys.executable).parent / "sbd-stream")


def _crafted(g: h5py.Group, name: str, data: np.ndarray) -> None:
    """``data`` as a bitshuffle-LZ4 dataset whose one chunk's first block declares 2 GB."""
    ds = g.create_dataset(name, data=data, chunks=(16384, *data.shape[1:]), maxshape=(None, *data.shape[1:]),
                          **hdf5plugin.Bitshuffle(cname="lz4"))  # fmt: skip
    ds.id.write_direct_chunk((0,) * ds.ndim, leap(ds.id.read_direct_chunk((0,) * ds.ndim)[1]))


def _velox(path: Path) -> Path:
    meta = json.dumps({"BinaryResult": {"PixelSize": {"width": "1e-10", "height": "1e-10"}}}).encode()
    with h5py.File(path, "w") as f:
        g = f.create_group("Data/Image/abc")
        g.create_dataset("Data", data=np.random.default_rng(0).poisson(3.0, (64, 64, 3)).astype("u2"))
        _crafted(g, "Metadata", np.repeat(np.frombuffer(meta, np.uint8)[:, None], 3, axis=1))
    return path


def _berkeley(path: Path) -> Path:
    with h5py.File(path, "w") as f:
        f.attrs["version_major"] = 0
        g = f.create_group("data/stack")
        g.attrs["emd_group_type"] = 1
        g.create_dataset("data", data=np.random.default_rng(0).poisson(3.0, (3, 64, 64)).astype("u2"))
        g.create_dataset("dim1", data=np.arange(3.0)).attrs["units"] = "[n_m]"
        _crafted(g, "dim2", np.arange(64.0) * 0.01)
        g["dim2"].attrs["units"] = "[n_m]"
        g.create_dataset("dim3", data=np.arange(64.0) * 0.01).attrs["units"] = "[n_m]"
    return path


@pytest.mark.parametrize(
    ("make", "dataset"), [(_velox, "Metadata"), (_berkeley, "dim2")], ids=["velox", "berkeley"]
)
def test_crafted_emd_metadata_is_one_error(make, dataset: str, tiny_engine_dir: Path, tmp_path: Path) -> None:
    inp = make(tmp_path / "in.emd")
    res = subprocess.run(
        [SBD, "denoise", str(inp), str(tmp_path / "out.h5"), "--model", str(tiny_engine_dir),
         "--engine", "torch", "--orientations", "1", "--scheduler", "none"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode >= 0, f"killed by signal {-res.returncode}: {res.stderr[-400:]}"
    assert res.returncode == 2, res.stderr[-800:]
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and dataset in errors[0] and "cannot be decoded" in errors[0], res.stderr[-800:]
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "out.h5").exists()
