"""Recordings are NeXus: HyperSpy (RosettaSciIO) and silx open them with calibrated axes.

Plain ``hs.load(path)`` and ``hs.load(path, reader="NeXus")`` are checked too, with no keyword: the
``.nxs`` name picks the NeXus reader, no NXdata group is ever empty (an empty axis stopped its full
read), and every axis comes back with units (the per-part ``frame`` axis is uniform, so the reader
keeps its units; the irregular ``time`` axis lost them).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from conftest import require_module, require_program

from sbd_stream.config import RecordSettings
from sbd_stream.formats.recording import AcqFile, iter_recorded, recorded_detector
from sbd_stream.metrics import Metrics
from sbd_stream.sinks.h5clear import clear_status_flags
from sbd_stream.sinks.recorder import Recorder, RecordItem, open_recording

pytestmark = pytest.mark.integration

PIXEL_A = 0.06
SAMPLING = {"pixel_size_A": PIXEL_A, "dose_e_per_A2": 125.0, "counts_per_px": 0.45, "bin": 4}
SHAPE = (24, 16)


def _frame(q: int) -> np.ndarray:
    return np.random.default_rng(q).poisson(0.45, SHAPE).astype(np.uint16)


def _record(directory: Path, n: int = 6, **settings) -> Path:
    """A finished recording of ``n`` frames at 40 Hz (raw jittered by 1 ms, outputs exactly on time)."""
    run = {"ingest": {"input": {"dialect": "wire-v1"}}}
    rec = Recorder(
        RecordSettings(directory=directory, **settings),
        Metrics(),
        card={"name": "tiny"},
        run_config=run,
        sampling=SAMPLING,
    )
    rec.write(RecordItem("series_start", "run/7", meta={"config": {"count_time": 0.02, "frame_time": 0.025}}))
    for q in range(n):
        ts = 5000.0 + 0.025 * q
        rec.write(RecordItem("raw", "run/7", q, ts + 0.001 * (q % 2), _frame(q)))
        rec.write(RecordItem("denoised", "run/7", q, ts, _frame(q).astype(np.float32) / 2))
        rec.write(RecordItem("llr", "run/7", q, ts, np.full(SHAPE, q, np.float32)))
    rec.write(RecordItem("series_end", "run/7"))
    return directory / "run_7.nxs"


@pytest.mark.timeout(60)
def test_nexus_layout_groups_links_and_attributes(tmp_path: Path) -> None:
    path = _record(tmp_path)
    with open_recording(path) as f:
        assert f.attrs["NX_class"] == "NXroot" and f.attrs["default"] == "entry"
        entry = f["entry"]
        assert entry.attrs["NX_class"] == "NXentry" and entry.attrs["default"] == "denoised"
        assert entry["title"][()].decode() == "run/7"
        assert entry["start_time"][()].decode().startswith("1970-01-01T01:23:20")  # 5000 s after epoch
        for kind in ("raw", "denoised", "llr"):
            g = entry[kind]
            assert g.attrs["NX_class"] == "NXdata" and g.attrs["signal"] == "frames"
            assert list(g.attrs["axes"]) == ["frame", "y", "x"] and g.attrs["time_indices"] == 0
            assert g["frames"].shape == (6, *SHAPE)
            assert f.get(kind, getlink=True).path == f"/entry/{kind}"  # the sbd-recording/1 names
            assert f[f"{kind}/frames"] == g["frames"]
            np.testing.assert_allclose(g["y"][:], np.arange(SHAPE[0]) * PIXEL_A)
            np.testing.assert_allclose(g["x"][:], np.arange(SHAPE[1]) * PIXEL_A)
            assert g["x"].attrs["units"] == "angstrom" and g["time"].attrs["units"] == "s"
            assert g["frame"].attrs["units"] == "frame" and list(g["frame"][:]) == list(range(6))
            np.testing.assert_array_equal(g["seq"][:], np.arange(6))  # frame numbers stay per frame
            np.testing.assert_allclose(g["time"][:], g["ts"][:] - 5000.0)
        det = entry["instrument/detector"]
        assert entry["instrument"].attrs["NX_class"] == "NXinstrument"
        assert det.attrs["NX_class"] == "NXdetector"
        assert det["x_pixel_size"][()] == PIXEL_A and det["x_pixel_size"].attrs["units"] == "angstrom"
        assert det["dose_per_frame"][()] == 125.0 and det["counts_per_pixel"][()] == 0.45
        assert det["count_time"][()] == 0.02 and det["count_time"].attrs["units"] == "s"
        assert det["frame_time"][()] == 0.025
        assert det["description"][()].decode() == "wire-v1"
        assert json.loads(det["series_metadata"][()]) == {"config": {"count_time": 0.02, "frame_time": 0.025}}
        proc = entry["process"]
        assert proc.attrs["NX_class"] == "NXprocess" and proc["program"][()].decode() == "sbd-stream"
        assert json.loads(proc["engine_card/data"][()]) == {"name": "tiny"}
        assert json.loads(proc["run_config/data"][()]) == {"ingest": {"input": {"dialect": "wire-v1"}}}
        assert proc["binning"][()] == 4
    # the readers of this repository go on working through the links
    got = list(iter_recorded(path))
    assert [g[1] for g in got] == list(range(6))
    np.testing.assert_array_equal(got[4][3], _frame(4))
    assert recorded_detector(path) == {"pixel_size_A": PIXEL_A, "dose_e_per_A2": 125.0}


@pytest.mark.timeout(60)
def test_time_axis_continues_across_rolled_parts(tmp_path: Path) -> None:
    _record(tmp_path, n=12, max_file_bytes=2_000, compression="none", record_llr=False)
    parts = sorted(tmp_path.glob("run_7*.nxs"))
    assert len(parts) >= 2
    times = []
    for p in parts:
        with open_recording(p) as f:
            times.extend(f["entry/raw/time"][:])
            assert "llr" not in f["entry"] and "llr" not in f
    np.testing.assert_allclose(times, 0.025 * np.arange(12) + 0.001 * (np.arange(12) % 2), atol=1e-9)


@pytest.mark.timeout(60)
def test_a_recording_made_before_the_nexus_layout_is_still_appended_to(tmp_path: Path) -> None:
    """A late output reopening a part written by the first layout (no /entry, no time axis)."""
    path = tmp_path / "old.h5"
    with h5py.File(path, "w", libver="latest") as f:
        f.attrs["acq"] = "old"
        for kind in ("raw", "denoised"):
            g = f.create_group(kind)
            dt = np.uint16 if kind == "raw" else np.float32
            g.create_dataset(
                "frames", data=_frame(0)[None].astype(dt), maxshape=(None, *SHAPE), chunks=(1, *SHAPE)
            )
            for name, dtype in (("seq", np.int64), ("ts", np.float64), ("complete", np.uint8)):
                g.create_dataset(name, data=np.zeros(1, dtype), maxshape=(None,), chunks=(4096,))
    af = AcqFile.reopen(path, RecordSettings(directory=tmp_path))
    assert af.n == {"raw": 1, "denoised": 1}
    af.append("denoised", 1, 1.0, _frame(1).astype(np.float32))
    af.close()
    got = list(iter_recorded(path, "denoised"))
    assert [g[1] for g in got] == [0, 1]
    np.testing.assert_array_equal(got[1][3], _frame(1).astype(np.float32))


def _hyperspy():
    return require_module("hyperspy.api", "HyperSpy not installed (pip install -e '.[dev]')")


def _silx_nxdata():
    require_module("silx", "silx not installed (pip install -e '.[dev]')")
    import silx.io
    import silx.io.nxdata

    return silx.io, silx.io.nxdata


def _units(ax: Any) -> bool:
    return isinstance(ax.units, str) and ax.units not in ("", "<undefined>")


def _check_plain_load(path: Path, n: int, pixel_A: float, kinds=("raw", "denoised")) -> None:
    """``hs.load(path)``, ``hs.load(path, reader="NeXus")``, no keyword: every kind, every axis with units."""
    hs = _hyperspy()
    for kw in ({}, {"reader": "NeXus"}):
        got = hs.load(path, **kw)
        signals = got if isinstance(got, list) else [got]
        stacks = {s.metadata.General.title: s for s in signals if s.data.ndim == 3}
        assert set(stacks) == set(kinds), (kw, sorted(stacks))
        for s in signals:  # the frames, and the per-row datasets RosettaSciIO also turns into signals
            assert all(_units(ax) for ax in s.axes_manager._axes), (kw, s.metadata.General.title)
        for s in stacks.values():
            (nav,) = s.axes_manager.navigation_axes
            assert nav.units == "frame" and nav.size == n and nav.scale == 1
            assert [ax.units for ax in s.axes_manager.signal_axes] == ["angstrom", "angstrom"]
            assert [ax.scale for ax in s.axes_manager.signal_axes] == pytest.approx([pixel_A, pixel_A])


def _check_hyperspy(path: Path, n: int, pixel_A: float, raw_dtype=np.uint16) -> Any:
    hs = _hyperspy()
    s = hs.load(path, file_format="nexus", use_default=True)  # the entry's default: denoised
    assert s.metadata.General.title == "denoised"
    assert s.data.shape[0] == n and s.axes_manager.navigation_shape == (n,)
    assert s.axes_manager.signal_dimension == 2
    for ax in s.axes_manager.signal_axes:
        assert ax.units == "angstrom" and ax.scale == pytest.approx(pixel_A)
    raw = hs.load(path, file_format="nexus", dataset_path="/entry/raw", lazy=True)
    assert raw.data.shape[0] == n and raw.data.dtype == raw_dtype
    assert [ax.scale for ax in raw.axes_manager.signal_axes] == pytest.approx([pixel_A, pixel_A])
    return s


def _check_silx(path: Path, n: int, pixel_A: float, kinds=("raw", "llr")) -> None:
    sio, nx = _silx_nxdata()
    with sio.open(str(path)) as f:
        d = nx.get_default(f)
        assert d is not None and d.is_valid and d.interpretation == "image"
        assert d.signal.shape[0] == n
        frame_ax, y_ax, x_ax = d.axes
        assert len(frame_ax) == n and frame_ax.attrs["units"] == "frame"
        time_ax = d.group["time"]  # auxiliary axis of the same dimension (time_indices = 0)
        assert len(time_ax) == n and time_ax.attrs["units"] == "s"
        for ax in (y_ax, x_ax):
            assert ax.attrs["units"] == "angstrom"
            assert float(ax[1] - ax[0]) == pytest.approx(pixel_A)
        for kind in kinds:
            assert nx.NXdata(f[f"entry/{kind}"]).is_valid


@pytest.mark.timeout(120)
def test_hyperspy_opens_a_recording_with_calibrated_axes(tmp_path: Path) -> None:
    path = _record(tmp_path)
    s = _check_hyperspy(path, 6, PIXEL_A)
    nav = s.axes_manager.navigation_axes[0]  # the row axis: uniform whatever the detector's clock did
    assert nav.units == "frame" and nav.scale == 1
    np.testing.assert_array_equal(s.data[3], _frame(3).astype(np.float32) / 2)
    _check_plain_load(path, 6, PIXEL_A, kinds=("raw", "denoised", "llr"))


_PLAIN_HS_LOAD = """
import sys
import numpy as np
if sys.argv[2] == "import":
    import hdf5plugin  # noqa: F401
import hyperspy.api as hs
stacks = {s.metadata.General.title: s.data for s in hs.load(sys.argv[1]) if s.data.ndim == 3}
print(sorted(stacks), float(np.asarray(stacks["raw"]).sum()))
"""


@pytest.mark.timeout(180)
def test_a_bitshuffle_recording_needs_hdf5plugin_in_hyperspy_as_documented(tmp_path: Path) -> None:
    """docs/service.md, "Opening a recording elsewhere": a fresh interpreter with nothing but HyperSpy
    cannot decompress the default bitshuffle-LZ4 frames (h5py finds no filter 32008); ``import
    hdf5plugin`` first, or ``HDF5_PLUGIN_PATH`` set to ``hdf5plugin.PLUGIN_PATH``, and plain
    ``hs.load(path)`` reads every frame. If the bare call starts working, the docs are out of date."""
    _hyperspy()
    import hdf5plugin

    path = _record(tmp_path, n=3)  # default compression: bitshuffle-lz4
    with open_recording(path) as f:
        assert "32008" in f["entry/raw/frames"]._filters  # the bitshuffle filter's registered id
    total = float(sum(_frame(q).sum() for q in range(3)))
    env = {k: v for k, v in os.environ.items() if k != "HDF5_PLUGIN_PATH"}

    def load(how: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-c", _PLAIN_HS_LOAD, str(path), how]
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=120, env={**env, **(extra_env or {})}
        )

    bare = load("bare")
    assert bare.returncode != 0, "plain hs.load now decompresses bitshuffle alone: update docs/service.md"
    assert "OSError" in bare.stderr and "read data" in bare.stderr, bare.stderr[-2000:]
    for got in (load("import"), load("bare", {"HDF5_PLUGIN_PATH": hdf5plugin.PLUGIN_PATH})):
        assert got.returncode == 0, got.stderr[-2000:]
        assert got.stdout.split() == ["['denoised',", "'llr',", "'raw']", str(total)]


@pytest.mark.timeout(120)
def test_parts_hold_no_empty_group_and_plain_hs_load_reads_each(tmp_path: Path) -> None:
    """A dtype roll: the first part gets one raw row and no output; neither part has an empty group."""
    rec = Recorder(RecordSettings(directory=tmp_path, min_free_bytes=0), Metrics(), sampling=SAMPLING)
    rec.write(RecordItem("raw", "r", 0, 1.0, _frame(0)))
    for q in (1, 2):
        rec.write(RecordItem("raw", "r", q, 1.0 + q, _frame(q).astype(np.float32)))
        rec.write(RecordItem("denoised", "r", q, 1.0 + q, _frame(q).astype(np.float32)))
    rec.close_all()
    with open_recording(tmp_path / "r.nxs") as f:
        assert "denoised" not in f and "llr" not in f and "denoised" not in f["entry"]
        assert f["entry"].attrs["default"] == "raw"
    with open_recording(tmp_path / "r_0001.nxs") as f:
        assert "llr" not in f["entry"] and f["entry"].attrs["default"] == "denoised"
    _check_plain_load(tmp_path / "r.nxs", 1, PIXEL_A, kinds=("raw",))
    _check_plain_load(tmp_path / "r_0001.nxs", 2, PIXEL_A)


@pytest.mark.timeout(120)
def test_silx_opens_a_recording_with_calibrated_axes(tmp_path: Path) -> None:
    path = _record(tmp_path)
    _check_silx(path, 6, PIXEL_A)


@pytest.mark.timeout(120)
def test_plain_h5py_reads_an_uncompressed_recording(tmp_path: Path) -> None:
    """``record.compression = "none"`` makes a file for tools without the HDF5 filter plugins."""
    path = _record(tmp_path, compression="none")
    with h5py.File(path, "r") as f:  # no hdf5plugin needed for these filters
        assert f["entry/raw/frames"].compression is None and not f["entry/raw/frames"]._filters
        np.testing.assert_array_equal(f["entry/raw/frames"][2], _frame(2))


@pytest.mark.timeout(240)
def test_a_replayed_recording_opens_in_hyperspy_and_silx(tmp_path: Path, tiny_engine_dir: Path) -> None:
    """``sbd-stream replay REC --record-dir DIR --compression gzip``: NeXus, readable without plugins."""
    src = _record(tmp_path / "src", n=5)
    sbd = str(Path(sys.executable).parent / "sbd-stream")
    cmd = [
        sbd, "replay", str(src), "--record-dir", str(tmp_path / "out"), "--compression", "gzip",
        "--model", str(tiny_engine_dir), "--engine", "onnxruntime", "--batch", "2",
    ]  # fmt: skip
    env = {**os.environ, "SBD_RECORD__MIN_FREE_BYTES": "0", "SBD_METRICS__PORT": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "out" / "run_7.nxs"
    _check_hyperspy(out, 5, PIXEL_A)  # the recording's own sampling, carried by replay
    _check_plain_load(out, 5, PIXEL_A)
    # a fresh interpreter with nothing but HyperSpy (gzip needs no filter plugin): hs.load(path)
    code = "import sys, hyperspy.api as hs; print([s.metadata.General.title for s in hs.load(sys.argv[1])])"
    got = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=120)
    assert got.returncode == 0, got.stderr[-2000:]
    assert "'denoised'" in got.stdout and "'raw'" in got.stdout
    _check_silx(out, 5, PIXEL_A, kinds=("raw",))
    with h5py.File(out, "r") as f:  # gzip: any HDF5 reader, no plugin
        assert f["entry/denoised/frames"].compression == "gzip"
        assert f["entry/instrument/detector/x_pixel_size"][()] == PIXEL_A


@pytest.mark.timeout(60)
def test_compression_option_is_validated(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sbd_stream.cli import app

    res = CliRunner().invoke(app, ["serve", "--compression", "lz5", "--record-dir", str(tmp_path)])
    assert res.exit_code == 2 and "compression" in res.output


_KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys, numpy as np
    from pathlib import Path
    from sbd_stream.config import RecordSettings
    from sbd_stream.metrics import Metrics
    from sbd_stream.sinks.recorder import Recorder, RecordItem
    rec = Recorder(RecordSettings(directory=Path(sys.argv[1]), min_free_bytes=0), Metrics(),
                   sampling={"pixel_size_A": 0.06})
    rec.write(RecordItem("series_start", "killed"))
    for q in range(12):
        fr = np.random.default_rng(q).poisson(0.45, (24, 16)).astype(np.uint16)
        rec.write(RecordItem("raw", "killed", q, 50.0 + 0.025 * q, fr))
        rec.write(RecordItem("denoised", "killed", q, 50.0 + 0.025 * q, fr.astype(np.float32) / 2))
    os.kill(os.getpid(), signal.SIGKILL)  # mid-acquisition: no series_end, no close
    """
)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("tool", ["h5clear", "python"])
def test_a_killed_recording_opens_in_hyperspy_and_silx_after_h5clear(tmp_path: Path, tool: str) -> None:
    if tool == "h5clear":
        require_program("h5clear", reason="h5clear not installed (Debian/Ubuntu: apt install hdf5-tools)")
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(tmp_path)], timeout=60)
    assert proc.returncode == -signal.SIGKILL
    path = tmp_path / "killed.nxs"
    with pytest.raises(OSError, match="h5clear"):  # what a reader without SWMR meets
        h5py.File(path, "r")
    if tool == "h5clear":
        subprocess.run(["h5clear", "-s", str(path)], check=True, timeout=60)
    else:
        subprocess.run([sys.executable, "-m", "sbd_stream.sinks.h5clear", str(path)], check=True, timeout=60)
    assert not clear_status_flags(path)  # nothing left to clear
    _check_hyperspy(path, 12, PIXEL_A)
    _check_plain_load(path, 12, PIXEL_A)
    _check_silx(path, 12, PIXEL_A, kinds=("raw",))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_recordings_open_in_hdf5_1_10(tmp_path: Path, compression: str) -> None:
    """Written with ``libver="latest"``, a recording took HDF5 2.0's format under h5py >= 3.16, and every
    filtered ``frames`` dataset was unreadable to HDF5 1.10-1.14 (MATLAB, Fiji, h5dump, older h5py): "bad
    version number for layout message". The file format is now bounded at 1.10, checked here with the
    system's h5dump (Debian's hdf5-tools, HDF5 1.10)."""
    h5dump = require_program("h5dump", reason="h5dump (Debian hdf5-tools) reads recordings as HDF5 1.10")
    s = RecordSettings(directory=tmp_path, min_free_bytes=0, compression=compression, record_llr=True)
    rec = Recorder(s, Metrics())
    for q in range(3):
        rec.write(RecordItem("raw", "old-tools", q, 10.0 + q, _frame(q)))
        rec.write(RecordItem("denoised", "old-tools", q, 10.0 + q, _frame(q).astype(np.float32)))
        rec.write(RecordItem("llr", "old-tools", q, 10.0 + q, _frame(q).astype(np.float32)))
    rec.close_all()
    path = tmp_path / "old-tools.nxs"
    for kind in ("raw", "denoised", "llr"):  # the layout (filters, chunks) of every stack, as 1.10 reads it
        out = subprocess.run([h5dump, "-H", "-p", "-d", f"/entry/{kind}/frames", str(path)], **RUN)
        assert out.returncode == 0 and "CHUNKED" in out.stdout, out.stderr[-500:]
    for kind, dtype in (("raw", np.uint16), ("llr", np.float32)):  # h5dump 1.10 has no float16 conversion
        binary = tmp_path / f"{kind}.bin"
        cmd = [h5dump, "-d", f"/entry/{kind}/frames", "-b", "LE", "-o", str(binary), str(path)]
        out = subprocess.run(cmd, **RUN)
        assert out.returncode == 0, out.stderr[-500:]
        got = np.fromfile(binary, dtype=dtype).reshape(3, *SHAPE)
        np.testing.assert_array_equal(got, np.stack([_frame(q) for q in range(3)]).astype(dtype))


RUN: dict[str, Any] = {"capture_output": True, "text": True, "timeout": 60}
