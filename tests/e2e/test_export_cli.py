"""`sbd-stream export REC --to tiff|mrc|npy`: frames and pixel size round-trip through each target."""

from __future__ import annotations

import io
import json
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sbd_stream.cli import app
from sbd_stream.config import RecordSettings
from sbd_stream.metrics import Metrics
from sbd_stream.sinks.recorder import Recorder, RecordItem

pytestmark = pytest.mark.integration

PIXEL_A = 0.06
SHAPE = (20, 12)


def _frame(q: int) -> np.ndarray:
    return np.random.default_rng(q).poisson(0.45, SHAPE).astype(np.uint16)


def _record(directory: Path, n: int = 8, **settings) -> Path:
    sampling = {"pixel_size_A": PIXEL_A, "dose_e_per_A2": 125.0, "counts_per_px": 0.45}
    rec = Recorder(RecordSettings(directory=directory, **settings), Metrics(), sampling=sampling)
    for q in range(n):
        rec.write(RecordItem("raw", "acq", q, 100.0 + 0.025 * q, _frame(q)))
        rec.write(RecordItem("denoised", "acq", q, 100.0 + 0.025 * q, _frame(q).astype(np.float32) / 3))
    rec.close_all()
    return directory / "acq.nxs"


def _export(*args: str) -> dict:
    res = CliRunner().invoke(app, ["export", *args])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def _expected(kind: str, n: int = 8) -> np.ndarray:
    raw = np.stack([_frame(q) for q in range(n)])
    return raw if kind == "raw" else (raw.astype(np.float32) / 3).astype(np.float16).astype(np.float32)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["raw", "denoised"])
def test_tiff_keeps_frames_and_imagej_calibration(tmp_path: Path, kind: str) -> None:
    import tifffile

    rec = _record(tmp_path)
    out = tmp_path / "x.tif"
    summary = _export(str(rec), "--to", "tiff", "--kind", kind, "--out", str(out))
    assert summary["frames"] == 8 and summary["unit"] == "angstrom"
    with tifffile.TiffFile(out) as tf:
        assert tf.is_imagej
        np.testing.assert_array_equal(tf.asarray(), _expected(kind))
        ij = tf.imagej_metadata
        assert ij["unit"] == "angstrom" and ij["frames"] == 8
        assert ij["finterval"] == pytest.approx(0.025)
        page = tf.pages[0]
        for tag in ("XResolution", "YResolution"):
            num, den = page.tags[tag].value
            assert den / num == pytest.approx(PIXEL_A, rel=1e-6)  # A per pixel


@pytest.mark.timeout(60)
def test_mrc_keeps_frames_and_voxel_size(tmp_path: Path) -> None:
    import mrcfile

    rec = _record(tmp_path)
    _export(str(rec), "--to", "mrc", "--kind", "raw")
    out = tmp_path / "acq_raw.mrc"  # the default name
    with mrcfile.open(out, permissive=False) as mrc:
        assert mrc.is_image_stack()
        np.testing.assert_array_equal(mrc.data, _expected("raw"))
        assert mrc.data.dtype == np.uint16
        for axis in ("x", "y"):
            assert float(getattr(mrc.voxel_size, axis)) == pytest.approx(PIXEL_A, rel=1e-6)
    assert mrcfile.validate(out, print_file=io.StringIO())  # the header's statistics match the data


@pytest.mark.timeout(120)
def test_a_recording_without_pixel_size_gives_an_mrc_of_unknown_voxel_size(
    tmp_path: Path, tiny_engine_dir: Path
) -> None:
    """A recording stating no pixel size was exported to MRC with a voxel size of 1 -- 1 A, in MRC's
    unit -- and ``denoise`` read that back and refused the file ("detector pixel 1 A is coarser than
    the engine's working pixel"); MRC's 0 is "unknown", which ``denoise`` treats as unstated."""
    import mrcfile

    rec = Recorder(RecordSettings(directory=tmp_path), Metrics())  # no sampling: no pixel_size_A
    for q in range(3):
        rec.write(RecordItem("raw", "acq", q, 100.0 + 0.025 * q, _frame(q)))
    rec.close_all()
    summary = _export(str(tmp_path / "acq.nxs"), "--to", "mrc", "--kind", "raw")
    assert summary["unit"] == "pixel"
    with mrcfile.open(tmp_path / "acq_raw.mrc", permissive=False) as mrc:
        assert float(mrc.voxel_size.x) == 0.0 and float(mrc.voxel_size.y) == 0.0
        np.testing.assert_array_equal(mrc.data, np.stack([_frame(q) for q in range(3)]))
    den = tmp_path / "den.h5"
    args = ["denoise", str(tmp_path / "acq_raw.mrc"), str(den), "--model", str(tiny_engine_dir)]
    res = CliRunner().invoke(app, [*args, "--scheduler", "none"])
    assert res.exit_code == 0, res.output


@pytest.mark.timeout(60)
def test_npy_with_sidecar_across_rolled_parts(tmp_path: Path) -> None:
    rec = _record(tmp_path, n=10, max_file_bytes=2_000, compression="none")
    assert len(list(tmp_path.glob("acq*.nxs"))) >= 2
    out = tmp_path / "d.npy"
    summary = _export(str(rec), "--to", "npy", "--out", str(out))
    np.testing.assert_array_equal(np.load(out), _expected("denoised", 10))
    side = json.loads(Path(summary["sidecar"]).read_text())
    assert side["pixel_size"] == PIXEL_A and side["unit"] == "angstrom"
    assert side["axes"] == ["frame", "y", "x"] and side["frame_numbers"] == list(range(10))
    np.testing.assert_allclose(side["time_s"], 0.025 * np.arange(10), atol=1e-9)
    assert side["dose_e_per_A2"] == 125.0


@pytest.mark.timeout(60)
def test_export_refuses_unknown_target_and_empty_kind(tmp_path: Path) -> None:
    rec = _record(tmp_path, record_llr=False)
    for args in (["--to", "png"], ["--to", "npy", "--kind", "llr"]):
        res = CliRunner().invoke(app, ["export", str(rec), *args])
        assert res.exit_code == 2 and "error:" in res.output


@pytest.mark.timeout(60)
def test_frames_come_out_in_frame_order_with_the_true_interval(tmp_path: Path) -> None:
    """The complete lane writes a skipped frame's denoised row late: the movie jumped back, and the
    ImageJ interval was the mean over unsorted rows (0.019 s for 0.025 s frames)."""
    sampling = {"pixel_size_A": PIXEL_A, "dose_e_per_A2": 125.0}
    rec = Recorder(RecordSettings(directory=tmp_path), Metrics(), sampling=sampling)
    order = [0, 1, 3, 4, 5, 2, 7, 6]  # rows as the two lanes would write them
    for q in range(8):
        rec.write(RecordItem("raw", "acq", q, 100.0 + 0.025 * q, _frame(q)))
    for q in order:
        rec.write(RecordItem("denoised", "acq", q, 100.0 + 0.025 * q, _frame(q).astype(np.float32) / 3))
    rec.close_all()
    import tifffile

    out = tmp_path / "d.tif"
    summary = _export(str(tmp_path / "acq.nxs"), "--to", "TIF", "--out", str(out))  # any case, tif
    assert summary["frame_interval_s"] == pytest.approx(0.025)
    with tifffile.TiffFile(out) as tf:
        np.testing.assert_array_equal(tf.asarray(), _expected("denoised"))
        assert tf.imagej_metadata["finterval"] == pytest.approx(0.025)
    npy = _export(str(tmp_path / "acq.nxs"), "--to", "npy", "--out", str(tmp_path / "d.npy"))
    side = json.loads(Path(npy["sidecar"]).read_text())
    assert side["frame_numbers"] == list(range(8))
    np.testing.assert_array_equal(np.load(tmp_path / "d.npy"), _expected("denoised"))


@pytest.mark.timeout(60)
def test_output_paths_that_would_lose_or_mislabel_data_are_refused(tmp_path: Path) -> None:
    rec = _record(tmp_path)
    _export(str(rec), "--to", "npy", "--out", str(tmp_path / "d.npy"))
    cases = [  # all but the first with --overwrite: refused for their own reason
        (["--to", "npy", "--out", str(tmp_path / "d.npy")], "pass --overwrite"),
        (["--to", "mrc", "--out", str(tmp_path / "x.tiff"), "--overwrite"], "but --to is mrc"),
        (["--to", "tiff", "--out", str(rec), "--overwrite"], "the recording itself"),
        (["--to", "tiff", "--out", str(tmp_path / "none" / "x.tif"), "--overwrite"], "does not exist"),
    ]
    for args, message in cases:
        res = CliRunner().invoke(app, ["export", str(rec), *args])
        assert res.exit_code == 2 and message in res.output, (args, res.output)
    assert _export(str(rec), "--to", "npy", "--out", str(tmp_path / "d.npy"), "--overwrite")["frames"] == 8


@pytest.mark.timeout(120)
def test_a_denoise_output_exports_too(tmp_path: Path, tiny_engine_dir: Path) -> None:
    """`export` of what `denoise` wrote crashed (a dataset where a recording has a group)."""
    import tifffile

    frames = np.stack([_frame(q) for q in range(3)])
    np.save(tmp_path / "in.npy", frames)
    den = tmp_path / "den.h5"
    res = CliRunner().invoke(
        app,
        [
            "denoise",
            str(tmp_path / "in.npy"),
            str(den),
            "--model",
            str(tiny_engine_dir),
            "--scheduler",
            "none",
        ],
    )
    assert res.exit_code == 0, res.output
    summary = _export(str(den), "--to", "tiff", "--out", str(tmp_path / "d.tif"))
    assert summary["frames"] == 3 and summary["unit"] == "angstrom"
    import h5py

    with h5py.File(den) as f, tifffile.TiffFile(tmp_path / "d.tif") as tf:
        np.testing.assert_array_equal(tf.asarray(), f["denoised"][:])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("to", ["npy", "mrc", "tiff"])
def test_a_full_disk_is_one_line_and_keeps_the_previous_export(tmp_path: Path, to: str) -> None:
    """NPY and MRC were written through a sparse memory map (a full disk: SIGBUS, a full-size file of
    zeros left at the output's name), a TIFF in place (a truncated TIFF left there). A file size limit
    makes the writes fail with EFBIG, as a full disk does (CPython ignores SIGXFSZ)."""
    rec = _record(tmp_path)
    out = tmp_path / f"x.{to}"
    _export(str(rec), "--to", to, "--kind", "raw", "--out", str(out))
    before = {p.name: p.read_bytes() for p in tmp_path.glob("x.*")}

    def limited() -> None:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2_500, 2_500))  # the export is ~4 kB

    cmd = [sys.executable, "-m", "sbd_stream", "export", str(rec), "--to", to, "--kind", "raw"]
    cmd += ["--out", str(out), "--overwrite"]
    res = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=limited, timeout=100)
    records = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+ (INFO|WARNING) ")
    err = [ln for ln in res.stderr.splitlines() if ln.strip() and not records.match(ln)]
    assert res.returncode == 2, res.stderr  # npy / mrc: -7 (SIGBUS) on a full disk
    assert len(err) == 1 and err[0].startswith(f"error: {out}: no space left"), err
    assert {p.name: p.read_bytes() for p in tmp_path.glob("x.*")} == before  # the good export, untouched
    assert not list(tmp_path.glob(".x.*"))  # no temporary file left


@pytest.mark.timeout(60)
@pytest.mark.parametrize("to", ["npy", "mrc", "tiff"])
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP", "SIGINT"])
def test_a_stop_signal_mid_export_leaves_no_temporary_file(
    tmp_path: Path, to: str, signame: str, monkeypatch
) -> None:
    """SIGTERM / SIGHUP ended the export by their default action, past the ``finally`` that removes
    the hidden ``.NAME.<pid>.partial``: it stayed beside the output. The signal is real, sent to this
    process while the second frame is read."""
    import os

    import sbd_stream.sinks.export as export_module

    rec = _record(tmp_path)
    frames = export_module._frames

    def signalled(*args, **kwargs):
        for i, frame in enumerate(frames(*args, **kwargs)):
            if i == 1:
                os.kill(os.getpid(), getattr(signal, signame))
            yield frame

    monkeypatch.setattr(export_module, "_frames", signalled)
    # under nohup (the suite in the background) SIGHUP is ignored, and export rightly leaves it so
    hup = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    # and a suite started as `cmd &` by a script inherits SIGINT ignored: Ctrl-C as in a terminal
    sigint = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
        out = tmp_path / f"x.{to}"
        res = CliRunner().invoke(app, ["export", str(rec), "--to", to, "--kind", "raw", "--out", str(out)])
        after = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    finally:
        signal.signal(signal.SIGHUP, hup)
        signal.signal(signal.SIGINT, sigint)
    number = getattr(signal, signame)
    assert res.exit_code == 128 + number, res.output
    assert f"{signame}: export stopped" in res.output
    assert not out.exists()
    assert not list(tmp_path.glob(".x.*"))  # the temporary file is gone
    assert after == before


@pytest.mark.timeout(60)
def test_a_first_layout_recording_exports_times_from_its_first_frame(tmp_path: Path) -> None:
    """The first layout (no /entry, no ``time`` axis, only the sender's absolute ``ts``) exported Unix
    seconds as the sidecar's ``time_s``; every later layout gives seconds from the first frame."""
    import h5py

    path = tmp_path / "old.h5"
    ts = 1_796_524_130.0 + 0.25 * np.arange(4)
    with h5py.File(path, "w", libver="latest") as f:
        f.attrs["acq"] = "old"
        g = f.create_group("raw")
        g.create_dataset("frames", data=np.stack([_frame(q) for q in range(4)]), maxshape=(None, *SHAPE))
        g.create_dataset("seq", data=np.arange(4, dtype=np.int64), maxshape=(None,))
        g.create_dataset("ts", data=ts, maxshape=(None,))
        g.create_dataset("complete", data=np.ones(4, np.uint8), maxshape=(None,))
    out = tmp_path / "x.npy"
    _export(str(path), "--to", "npy", "--kind", "raw", "--out", str(out))
    side = json.loads(out.with_suffix(".json").read_text())
    np.testing.assert_allclose(side["time_s"], 0.25 * np.arange(4))
    np.testing.assert_array_equal(np.load(out), np.stack([_frame(q) for q in range(4)]))
