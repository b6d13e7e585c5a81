"""Damaged recordings and stacks: every reader refuses them in one line, within seconds.

A fuzz audit cut a real recording short (100, 512, 2048 bytes) or flipped a few bytes: in SWMR read
mode libhdf5 retried each failed metadata read for up to an hour, inside C code, so ``export``,
``denoise`` and ``replay --offline`` ran for more than 12 minutes and ignored Ctrl-C and SIGTERM.
Other files ended in a traceback (a soft-link loop, ``/entry`` a dataset, a 4-byte TIFF, an NPY header
``{{{{``, ``pixel_size_A = 1e-300``), or were taken without a word (complex or bool frames, a NaN pixel
size written into the export). Real Recorder files, damaged with h5py or byte by byte; every check that
could hang runs in a child under a timeout (hostile_files.py).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest
from hostile_files import one_error_line, run_capped, run_snippet

from sbd_stream.config import RecordSettings
from sbd_stream.formats.hdf5_read import WRITER_FLAGS, status_flags
from sbd_stream.metrics import Metrics
from sbd_stream.sinks.export import ExportError, export
from sbd_stream.sinks.h5clear import lookup3
from sbd_stream.sinks.recorder import Recorder, RecordItem
from sbd_stream.sources.stacks import StackError, open_stack

pytestmark = pytest.mark.integration


@pytest.fixture
def recording(tmp_path: Path) -> Path:
    """A real recording of 3 raw 32 x 24 frames at 0.06 A, closed (no writer flags)."""
    s = RecordSettings(directory=tmp_path / "rec", min_free_bytes=0, record_llr=False, compression="none")
    rec = Recorder(s, Metrics(), sampling={"pixel_size_A": 0.06, "dose_e_per_A2": 125.0})
    for q in range(3):
        rec.write(RecordItem("raw", "acq", q, 100.0 + q, np.full((32, 24), q + 1, np.uint16)))
    rec.close_all()
    (path,) = sorted((tmp_path / "rec").glob("*.nxs"))
    return path


def _cut(src: Path, dst: Path, size: int, writer_flags: bool = False) -> Path:
    """The first ``size`` bytes of ``src``; with ``writer_flags`` its superblock says a SWMR writer has
    it open (as a writer killed mid-acquisition leaves it), checksum made good, so readers use SWMR."""
    data = bytearray(src.read_bytes()[:size])
    if writer_flags:
        assert data[8] == 3  # superblock version 3: flags at byte 11, checksum after 4 addresses
        end = 12 + 4 * data[9]
        data[11] = WRITER_FLAGS
        struct.pack_into("<I", data, end, lookup3(bytes(data[:end])))
    dst.write_bytes(bytes(data))
    return dst


_READERS = """
import json
from pathlib import Path
from sbd_stream.service.offline_plan import inspect_recording
from sbd_stream.sinks.export import _survey
from sbd_stream.sources.stacks import open_stack
out = {}
for path in PATHS:
    for name, read in (("export", lambda: _survey(Path(path), "raw")), ("offline", lambda: inspect_recording(
            Path(path))), ("stack", lambda: open_stack(Path(path)))):
        try:
            read()
            out[path + " " + name] = ["ok", ""]
        except Exception as e:
            out[path + " " + name] = [type(e).__name__, str(e)]
print(json.dumps(out))
"""


@pytest.mark.timeout(300)
def test_a_cut_short_or_flagged_recording_is_refused_at_once(recording: Path, tmp_path: Path) -> None:
    """Cut at 100 / 512 / 2048 bytes, with and without the writer's flags (SWMR read then, its retries
    bounded): each reader raises its one-line error instead of retrying for an hour (the child's
    timeout fails the test where a reader hangs)."""
    damaged = [_cut(recording, tmp_path / f"cut{n}.nxs", n) for n in (100, 512, 2048)]
    damaged.append(_cut(recording, tmp_path / "flagged.nxs", 512, writer_flags=True))
    assert status_flags(damaged[-1]) & WRITER_FLAGS and not status_flags(recording)
    got = run_snippet(_READERS.replace("PATHS", repr([str(p) for p in damaged])), timeout=240)
    for key, (kind, msg) in got.items():
        assert kind in ("ExportError", "OSError", "StackError", "RecordingError"), (key, kind, msg)
        assert key.split()[0] in msg and "\n" not in msg, (key, msg)


@pytest.mark.timeout(300)
def test_export_of_a_cut_short_recording_is_one_line(recording: Path, tmp_path: Path) -> None:
    bad = _cut(recording, tmp_path / "cut.nxs", 100)
    cmd = [
        "-m",
        "sbd_stream",
        "export",
        str(bad),
        "--to",
        "npy",
        "--kind",
        "raw",
        "--out",
        str(tmp_path / "x.npy"),
    ]
    line = one_error_line(run_capped(cmd, timeout=240))
    assert line.startswith(f"error: {bad}: not a readable HDF5 recording (truncated file"), line


def test_a_live_recording_still_opens_in_swmr_read_mode(tmp_path: Path) -> None:
    """The writer's flags are set while it records: the reader follows it (SWMR), frames appear."""
    from sbd_stream.formats.recording import open_recording

    rec = Recorder(RecordSettings(directory=tmp_path, min_free_bytes=0), Metrics())
    rec.write(RecordItem("raw", "live", 0, 0.0, np.ones((8, 8), np.uint16)))
    path = tmp_path / "live.nxs"
    assert status_flags(path) & WRITER_FLAGS
    with open_recording(path) as f:
        assert f.swmr_mode and len(f["raw/complete"]) == 1
        rec.write(RecordItem("raw", "live", 1, 0.0, np.full((8, 8), 2, np.uint16)))
        f["raw/complete"].refresh()
        f["raw/frames"].refresh()
        assert len(f["raw/complete"]) == 2 and f["raw/frames"][1].max() == 2
    rec.close_all()
    with open_recording(path) as f:  # closed cleanly: opened plainly now
        assert not f.swmr_mode and len(f["raw/complete"]) == 2


def _with_attr(src: Path, dst: Path, name: str, value: object | None) -> Path:
    dst.write_bytes(src.read_bytes())
    with h5py.File(dst, "r+") as f:
        if value is None:
            del f.attrs[name]
        else:
            f.attrs[name] = value
    return dst


@pytest.mark.parametrize(
    "value, said",
    [
        ("x", "must be a finite number > 0"),
        (np.array([0.06, 0.06]), "must be a finite number > 0"),
        (float("nan"), "must be a finite number > 0"),
        (-0.06, "must be a finite number > 0"),
        (0.0, "must be a finite number > 0"),
        (1e-300, "is no detector pixel"),
    ],
)
@pytest.mark.parametrize("to", ["npy", "tiff", "mrc"])
def test_export_refuses_a_pixel_size_that_is_none(
    recording: Path, tmp_path: Path, value: object, said: str, to: str
) -> None:
    """The rule ``denoise`` applies (``sampling_attrs``): NaN made an NPY sidecar no JSON parser reads,
    a negative size a TIFF traceback or a file claiming it, a string or an array a traceback."""
    bad = _with_attr(recording, tmp_path / "px.nxs", "pixel_size_A", value)
    with pytest.raises(ExportError, match=said) as e:
        export(bad, to, "raw", tmp_path / f"x.{to}")
    assert str(bad) in str(e.value) and "\n" not in str(e.value)
    assert not list(tmp_path.glob("x.*")) and not list(tmp_path.glob(".x.*"))


def test_export_writes_a_valid_pixel_size_and_unit_pixel_without_one(recording: Path, tmp_path: Path) -> None:
    summary = export(recording, "npy", "raw", tmp_path / "x.npy")
    assert (summary["unit"], summary["pixel_size"], summary["frames"]) == ("angstrom", 0.06, 3)
    none = _with_attr(recording, tmp_path / "none.nxs", "pixel_size_A", None)
    summary = export(none, "npy", "raw", tmp_path / "y.npy")
    assert (summary["unit"], summary["pixel_size"]) == ("pixel", 1.0)
    assert json.loads((tmp_path / "y.json").read_text())["unit"] == "pixel"


def _with_frames(src: Path, dst: Path, data: np.ndarray) -> Path:
    dst.write_bytes(src.read_bytes())
    with h5py.File(dst, "r+") as f:
        del f["entry/raw/frames"]
        f.create_dataset("entry/raw/frames", data=data, maxshape=(None, *data.shape[1:]))
    return dst


@pytest.mark.parametrize("dtype", ["c8", "bool", "S1"])
def test_frames_that_hold_no_counts_are_refused(recording: Path, tmp_path: Path, dtype: str) -> None:
    """Complex (the imaginary part was dropped), bool and byte-string frames: refused as the live
    edge refuses them (``bad_dtype``), by export and by denoise / replay --offline."""
    from sbd_stream.service.offline_plan import inspect_recording

    bad = _with_frames(recording, tmp_path / "d.nxs", np.ones((3, 32, 24), dtype))
    with pytest.raises(ExportError, match=r"raw frames: dtype .* is not a count or intensity type"):
        export(bad, "npy", "raw", tmp_path / "x.npy")
    with pytest.raises(StackError, match="is not a count or intensity type"):
        inspect_recording(bad)


@pytest.mark.parametrize("dtype", ["f8", "i8"])
def test_float64_and_int64_frames_are_exported(recording: Path, tmp_path: Path, dtype: str) -> None:
    """Accepted as every stack reader accepts them (``check_dtype``: uint / int / float)."""
    ok = _with_frames(recording, tmp_path / "d.nxs", np.ones((3, 32, 24), dtype))
    export(ok, "npy", "raw", tmp_path / "x.npy")
    assert np.load(tmp_path / "x.npy").dtype == np.dtype(dtype)


def _broken_layout(src: Path, dst: Path, how: str) -> Path:
    dst.write_bytes(src.read_bytes())
    with h5py.File(dst, "r+") as f:
        if how == "no raw":
            del f["entry/raw"]
        elif how == "entry a dataset":
            del f["entry"]
            f["entry"] = np.arange(3)
        else:  # a soft link to itself
            del f["entry/raw/frames"]
            f["entry/raw/frames"] = h5py.SoftLink("/entry/raw/frames")
    return dst


@pytest.mark.parametrize("how", ["no raw", "entry a dataset", "link loop"])
def test_a_recording_whose_frames_cannot_be_followed_is_one_line(
    recording: Path, tmp_path: Path, how: str
) -> None:
    bad = _broken_layout(recording, tmp_path / "b.nxs", how)
    with pytest.raises(ExportError) as e:
        export(bad, "npy", "raw", tmp_path / "x.npy")
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_a_four_byte_tiff_and_an_npy_header_of_braces_are_one_line(tmp_path: Path) -> None:
    tif = tmp_path / "t.tif"
    tif.write_bytes(b"II*\x00")
    with pytest.raises(StackError, match="not a readable TIFF"):
        open_stack(tif)
    npy = tmp_path / "n.npy"
    head = b"{{{{".ljust(118) + b"\n"
    npy.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(head)) + head + bytes(64))
    with pytest.raises(StackError, match="not a plain numeric NPY array"):
        open_stack(npy)


@pytest.mark.parametrize("pixel", [1e-300, 1e-6, 1e6])
def test_a_stack_stating_an_absurd_pixel_size_is_refused_up_front(tmp_path: Path, pixel: float) -> None:
    """1e-300 made ``denoise`` die writing its output (a TypeError), 1e-6 ask for 460 GB."""
    path = tmp_path / "s.h5"
    with h5py.File(path, "w") as f:
        f["frames"] = np.ones((2, 16, 16), np.uint16)
        f.attrs["pixel_size_A"] = pixel
    with pytest.raises(StackError, match=r"attribute pixel_size_A: .* is no detector pixel"):
        open_stack(path)


def test_a_stack_with_damaged_metadata_is_one_line(recording: Path, tmp_path: Path) -> None:
    """Flipped bytes in the root group's header: an h5py RuntimeError / KeyError was a traceback."""
    data = bytearray(recording.read_bytes())
    start = 48  # superblock 3 is 48 bytes; the root object header follows it
    for i in range(start + 8, start + 40):
        data[i] ^= 0xFF
    bad = tmp_path / "flipped.h5"
    bad.write_bytes(bytes(data))
    with pytest.raises(StackError, match="not a readable HDF5 file"):
        open_stack(bad)
