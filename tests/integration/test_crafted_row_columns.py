"""A recording whose per-row columns (not its frames) pass a filter that can crash: one error line.

Why (session 32): frames are read through ``safe_chunks.safe_dataset``, but ``seq``, ``ts``,
``complete``, the column table... were read by libhdf5 through whatever filter the file names. A
recording by the real Recorder whose ``raw/complete`` (or ``raw/seq``, ``llr/columns``) was recreated
bitshuffle-LZ4 with a crafted chunk killed ``export``, ``replay --offline``, ``emulate --source``,
``denoise REC.nxs`` and ``export --kind columns`` with SIGSEGV (exit -11). ``open_recording`` now
refuses a dataset other than frames whose filters are not libhdf5's own (the recorder writes none).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import pytest
from crafted_files import leap, small_recorder

from sbd_stream.formats import column_table
from sbd_stream.sinks.recorder import RecordItem

pytestmark = pytest.mark.integration
SBD = str(Path(sys.executable).parent / "sbd-stream")


def _recording(directory: Path) -> Path:
    """Raw (bitshuffle-LZ4, the default) and llr frames with column tables, by the real Recorder."""
    rec = small_recorder(directory)
    rec.write(RecordItem("series_start", "run/9"))
    for q in range(5):
        ts = 100.0 + 0.025 * q
        rec.write(
            RecordItem("raw", "run/9", q, ts, np.random.default_rng(q).poisson(0.45, (64, 64)).astype("u2"))
        )
        item = RecordItem("llr", "run/9", q, ts, np.full((64, 64), q, np.float32))
        item.meta = column_table.row_meta("llr", {"blank": False}, np.ones((3, 4), np.float32), 0.5)
        rec.write(item)
    rec.write(RecordItem("series_end", "run/9"))
    rec.close_all()
    return directory / "run_9.nxs"


def _crafted(f: h5py.File, name: str, data: np.ndarray, maxshape: tuple) -> None:
    """``name`` as a bitshuffle-LZ4 dataset (filters are fixed at creation) of chunks of several
    bitshuffle blocks, its first block declaring 2 GB: the filter jumps 2 GB ahead to the next one."""
    ds = f.create_dataset(
        name,
        data=data,
        chunks=(16384, *data.shape[1:]),
        maxshape=maxshape,
        **hdf5plugin.Bitshuffle(cname="lz4"),
    )
    start = (0,) * ds.ndim
    ds.id.write_direct_chunk(start, leap(ds.id.read_direct_chunk(start)[1]))


def _rewrite(path: Path, name: str, how: str = "in place") -> None:
    """Recreate dataset ``name`` crafted: in place, in a side file it links to (``external``), or as a
    soft link to a crafted dataset named ``frames`` (``soft``: judged by the name it is read by)."""
    with h5py.File(path, "r+") as f:
        ds = f[name]
        data, attrs, maxshape = ds[()], dict(ds.attrs), ds.maxshape
        del f[name]
        if how == "external":
            with h5py.File(path.with_name("side.h5"), "w") as side:
                _crafted(side, "col", data, maxshape)
            f[name] = h5py.ExternalLink("side.h5", "/col")
        elif how == "soft":
            _crafted(f, "hidden/frames", data, maxshape)
            f[name] = h5py.SoftLink("/hidden/frames")
        else:
            _crafted(f, name, data, maxshape)
            f[name].attrs.update(attrs)


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([SBD, *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def _one_error(res: subprocess.CompletedProcess, dataset: str) -> None:
    assert res.returncode >= 0, f"killed by signal {-res.returncode}: {res.stderr[-400:]}"
    assert res.returncode == 2, res.stderr[-800:]
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in res.stderr, res.stderr[-800:]
    assert f"its dataset {dataset} passes HDF5 filter 32008 (bitshuffle)" in errors[0], errors[0]
    assert "run_9.nxs" in errors[0] and "never writes: not read, crafted or damaged" in errors[0], errors[0]


def test_a_crafted_complete_column_is_one_error_for_every_reader(
    tiny_engine_dir: Path, tmp_path: Path
) -> None:
    rec = _recording(tmp_path / "rec")
    _rewrite(rec, "raw/complete")
    model = ["--model", str(tiny_engine_dir), "--engine", "torch", "--scheduler", "none"]
    for args in (
        ["export", str(rec), "--kind", "raw", "--to", "npy", "--out", str(tmp_path / "x.npy")],
        ["replay", str(rec), "--offline", "--out", str(tmp_path / "r.h5"), *model],
        ["emulate", "--source", str(rec), "--endpoint", "tcp://127.0.0.1:*", "--frames", "2", "--rate", "0"],
        ["denoise", str(rec), str(tmp_path / "d.h5"), "--orientations", "1", *model],
    ):
        _one_error(_run(*args, cwd=tmp_path), "entry/raw/complete")
    assert not (tmp_path / "d.h5").exists() and not (tmp_path / "x.npy").exists()


@pytest.mark.parametrize(
    ("name", "how"), [("llr/columns", "in place"), ("llr/seq", "external"), ("llr/ts", "soft")]
)
def test_a_crafted_column_table_is_one_error_for_its_export(name: str, how: str, tmp_path: Path) -> None:
    """The column table, in the file, behind an external link or a soft link to a ``frames`` dataset."""
    rec = _recording(tmp_path / "rec")
    _rewrite(rec, name, how)
    res = _run(
        "export", str(rec), "--kind", "columns", "--to", "csv", "--out", str(tmp_path / "c.csv"), cwd=tmp_path
    )
    _one_error(res, f"entry/{name}")


def test_a_valid_recording_and_its_denoised_output_read_as_before(
    tiny_engine_dir: Path, tmp_path: Path
) -> None:
    """Bitshuffle-LZ4 frames and a ``replay --offline`` output's bitshuffle-LZ4 ``denoised`` (both read
    checked, so exempt), plain row columns: exported as before, not refused."""
    rec = _recording(tmp_path / "rec")
    res = _run(
        "export", str(rec), "--kind", "raw", "--to", "npy", "--out", str(tmp_path / "x.npy"), cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr[-800:]
    want = np.stack([np.random.default_rng(q).poisson(0.45, (64, 64)).astype("u2") for q in range(5)])
    assert np.array_equal(np.load(tmp_path / "x.npy"), want)
    model = ["--model", str(tiny_engine_dir), "--engine", "torch", "--scheduler", "none"]
    res = _run("replay", str(rec), "--offline", "--out", str(tmp_path / "r.h5"), *model, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-800:]
    out = str(tmp_path / "d.npy")
    res = _run(
        "export", str(tmp_path / "r.h5"), "--kind", "denoised", "--to", "npy", "--out", out, cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr[-800:]
    with h5py.File(tmp_path / "r.h5") as f:
        assert f["denoised"].id.get_create_plist().get_filter(0)[0] == 32008  # what the exemption is for
        assert np.array_equal(np.load(tmp_path / "d.npy"), f["denoised"][()])
