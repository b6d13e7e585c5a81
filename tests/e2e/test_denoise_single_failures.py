"""`sbd-stream denoise --scheduler none` under failure, as processes: a full disk, a signal, an input cut
short mid-read and a second job on the same output each end in one line with nothing left behind.

The audit found a full disk (EFBIG / ENOSPC) ending in SIGSEGV or SIGBUS at exit (the half-closed HDF5
file freed), SIGTERM and SIGHUP leaving the hidden ``.OUT.partial``, an NPY truncated while read
killing the process with SIGBUS (its memory map), and a second job truncating the first one's
temporary file, the first then exiting 0 with half its frames unreadable. A job is held still with
SIGSTOP where the test needs it to be mid-run: nothing depends on timing.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import hup_default, wait_until

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "sbd_stream"]
SAMPLING = ("--pixel-size", "0.06", "--counts-per-px", "0.45")


def _cmd(inp: Path, out: Path, engine: Path, *extra: str) -> list[str]:
    return [
        *CLI, "denoise", str(inp), str(out), "--model", str(engine), "--engine", "torch",
        "--scheduler", "none", *SAMPLING, *extra,
    ]  # fmt: skip


def _start(cmd: list[str], preexec: Callable[[], None] = hup_default) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec
    )


def _partial(out: Path) -> Path:
    return out.with_name(f".{out.name}.partial")


def _started(proc: subprocess.Popen, out: Path) -> None:
    """Wait until the job writes its temporary file, then hold it still (SIGSTOP)."""
    assert wait_until(lambda: proc.poll() is not None or _partial(out).exists(), 120)
    assert proc.poll() is None, "the job ended before it could be caught mid-run: make it longer"
    proc.send_signal(signal.SIGSTOP)


def _finish(proc: subprocess.Popen) -> tuple[int, list[str]]:
    """(exit status, stderr lines other than the progress bar and the log's INFO / WARNING records:
    the tiny engine states no working pixel, which is warned about)."""
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    noise = re.compile(r"^(\d{4}-\d\d-\d\d [\d:,]+ (INFO|WARNING) |denoising )")  # records, the bar
    return proc.returncode, [ln for ln in err.splitlines() if ln.strip() and not noise.match(ln)]


def _npy(path: Path, n: int, shape: tuple[int, int] = (96, 96)) -> Path:
    np.save(path, np.random.default_rng(0).poisson(0.45, (n, *shape)).astype(np.uint16))
    return path


@pytest.mark.timeout(180)
def test_a_full_disk_is_one_line_with_nothing_left(tiny_engine_dir: Path, tmp_path: Path) -> None:
    """Writes past the file size limit fail with EFBIG, as on a full disk (CPython ignores SIGXFSZ)."""
    inp = _npy(tmp_path / "in.npy", 24)
    out = tmp_path / "out.h5"

    def limited() -> None:
        hup_default()
        resource.setrlimit(resource.RLIMIT_FSIZE, (400_000, 400_000))

    rc, err = _finish(_start(_cmd(inp, out, tiny_engine_dir, "--batch", "2"), limited))
    assert rc == 2, err  # was -11 / -7: the half-closed HDF5 file freed at exit
    assert len(err) == 1 and err[0].startswith(f"error: {out}: no space left"), err
    assert "of 24 frames" in err[0] and "File too large" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy"]  # no .out.h5.partial, no lock


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("sig", "status"),
    [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)],
    ids=["TERM", "HUP", "INT"],
)
def test_a_signal_removes_the_temporary_file(
    tiny_engine_dir: Path, tmp_path: Path, sig: int, status: int
) -> None:
    inp = _npy(tmp_path / "in.npy", 200)
    out = tmp_path / "out.h5"
    proc = _start(_cmd(inp, out, tiny_engine_dir, "--batch", "2"))
    _started(proc, out)
    proc.send_signal(sig)
    proc.send_signal(signal.SIGCONT)
    rc, err = _finish(proc)
    assert rc == status, err
    assert len(err) == 1 and "interrupted after frame" in err[0] and "nothing was kept" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy"]  # SIGTERM / SIGHUP left .out.h5.partial


@pytest.mark.timeout(180)
@pytest.mark.parametrize("fmt", ["npy", "mrc"])
def test_an_input_cut_short_while_read_is_one_line(tiny_engine_dir: Path, tmp_path: Path, fmt: str) -> None:
    """NPY (and MRC) frames were read through a memory map: the first page past the new end faulted."""
    inp = _npy(tmp_path / "in.npy", 200)
    if fmt == "mrc":
        import mrcfile

        with mrcfile.new(tmp_path / "in.mrc") as m:
            m.set_data(np.load(inp))
            m.set_image_stack()
        inp.unlink()
        inp = tmp_path / "in.mrc"
    out = tmp_path / "out.h5"
    proc = _start(_cmd(inp, out, tiny_engine_dir, "--batch", "2"))
    _started(proc, out)
    os.truncate(inp, inp.stat().st_size // 4)
    proc.send_signal(signal.SIGCONT)
    rc, err = _finish(proc)
    assert rc == 2, err  # was -7 (SIGBUS), no message
    assert len(err) == 1 and err[0].startswith(f"error: {inp}: frame ") and "ends early" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == [inp.name]


@pytest.mark.timeout(180)
def test_a_second_job_on_the_same_output_never_touches_the_first(
    tiny_engine_dir: Path, tmp_path: Path
) -> None:
    """The second job's ``h5py.File(tmp, "w")`` truncated the first one's temporary file before HDF5's
    lock refused it; the first then exited 0 with half its frames unreadable."""
    from sbd_stream.config import DenoiseSettings
    from sbd_stream.formats.output_lock import OutputBusy
    from sbd_stream.service.offline import denoise_file

    inp = _npy(tmp_path / "a.npy", 60)
    other = _npy(tmp_path / "b.npy", 4)
    out = tmp_path / "out.h5"
    proc = _start(_cmd(inp, out, tiny_engine_dir, "--batch", "2", "--orientations", "1"))
    try:
        _started(proc, out)
        before = _partial(out).stat()
        with pytest.raises(OutputBusy, match=f"pid {proc.pid}"):
            denoise_file(other, out, settings=DenoiseSettings(engine="torch", model=str(tiny_engine_dir)))
        after = _partial(out).stat()
        same = ("st_ino", "st_size", "st_mtime_ns")
        assert [getattr(after, k) for k in same] == [getattr(before, k) for k in same]
    finally:
        proc.send_signal(signal.SIGCONT)
    rc, err = _finish(proc)
    assert rc == 0, err
    with h5py.File(out, "r") as f:
        assert f["denoised"].shape == (60, 96, 96)
        assert np.isfinite(f["denoised"][:]).all()  # every frame readable (was: "filter returned failure")
        assert f.attrs["source"] == str(inp)


@pytest.mark.timeout(180)
def test_an_output_that_appears_meanwhile_is_kept_without_overwrite(
    tiny_engine_dir: Path, tmp_path: Path
) -> None:
    """``check_paths`` looked once, at the start: a file that appeared at the output's name while the
    job ran was replaced without ``--overwrite``."""
    inp = _npy(tmp_path / "in.npy", 60)
    out = tmp_path / "out.h5"
    script = (
        "import sys; from pathlib import Path; from sbd_stream.config import DenoiseSettings\n"
        "from sbd_stream.service.offline import denoise_file\n"
        "s = DenoiseSettings(engine='torch', model=sys.argv[3], batch_frames=2)\n"
        "try:\n"
        "    denoise_file(Path(sys.argv[1]), Path(sys.argv[2]), settings=s, overwrite=False)\n"
        "except FileExistsError as e:\n"
        "    sys.exit(f'refused: {e}')\n"
    )
    proc = _start([sys.executable, "-c", script, str(inp), str(out), str(tiny_engine_dir)])
    _started(proc, out)
    out.write_bytes(b"keep me")
    proc.send_signal(signal.SIGCONT)
    rc, err = _finish(proc)
    assert rc == 1 and err[-1].startswith(f"refused: {out} appeared while this job ran"), err
    assert out.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy", "out.h5"]
    from sbd_stream.service.offline import denoise_file

    with pytest.raises(FileExistsError, match="pass --overwrite"):  # and at the start, under the lock
        denoise_file(inp, out, overwrite=False)
    assert out.read_bytes() == b"keep me"
