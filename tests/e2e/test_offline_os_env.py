"""`sbd-stream denoise` and `replay --offline` in a hostile operating-system environment, as processes.

Audit 27 found: a stderr on a full disk (``2>/dev/full``) taken for the output's disk being full, the
finished output deleted; a ``MemoryError`` under ``ulimit -v`` printed as a traceback; an input named
with a byte that is not UTF-8 (or a UTF-8 name under an ASCII locale) refused with a codec error, and
``replay --offline`` leaving ``OUT.partial`` behind; a path component over NAME_MAX a traceback, and
errors naming the internal ``OUT.lock``; a FIFO as the input blocking for ever. Every case runs the real
command on real files (a real FIFO, a real address-space limit, a real file named with a raw byte).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import resource
import socket
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import hup_default

from sbd_stream.config import RecordSettings
from sbd_stream.metrics import Metrics
from sbd_stream.sinks.recorder import Recorder, RecordItem

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "sbd_stream"]
SAMPLING = ("--pixel-size", "0.06", "--counts-per-px", "0.45")
# log records, the bar, and a Dask worker's own record of the tiny engine's warning (no time stamp)
NOISE = re.compile(
    r"^(\d{4}-\d\d-\d\d [\d:,]+ (INFO|WARNING) |denoising |engine \S+ states no working pixel)"
)


def _engine(engine: Path) -> list[str]:
    return ["--model", str(engine), "--engine", "torch", "--device", "cpu", *SAMPLING]


def _run(
    args: list[str], stderr: int | object = subprocess.PIPE, preexec: Callable[[], None] = hup_default,
    env: dict[str, str] | None = None,
) -> tuple[int, str, list[str]]:  # fmt: skip
    """(exit status, stdout, stderr lines other than log records and the bar); bounded, never hangs."""
    proc = subprocess.Popen(
        [*CLI, *args],
        stdout=subprocess.PIPE,
        stderr=stderr,
        preexec_fn=preexec,
        env=env,  # type: ignore[arg-type]
    )
    try:
        out, err = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:  # a FIFO input blocked for ever: fail, do not hang the suite
            proc.kill()
            proc.wait(10)
    text = (err or b"").decode("utf-8", "backslashreplace")
    lines = [ln for ln in text.splitlines() if ln.strip() and not NOISE.match(ln)]
    return proc.returncode, out.decode("utf-8", "backslashreplace"), lines


def _h5(path: Path, n: int, shape: tuple[int, int] = (32, 32)) -> Path:
    with h5py.File(path, "w") as f:
        f["frames"] = np.random.default_rng(0).poisson(0.45, (n, *shape)).astype(np.uint16)
    return path


def _dask(chunk_frames: int) -> list[str]:
    """A real local cluster (more than one chunk), one worker to spare a busy machine."""
    return ["--scheduler", "local", "--chunk-frames", str(chunk_frames), "--dask-workers", "1"]


SCHEDULERS = {"none": ["--scheduler", "none", "--batch", "4"], "dask": [*_dask(8), "--batch", "4"]}


# ---- defect 1: the terminal is not the output ------------------------------------------------------
@pytest.mark.timeout(300)
@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_a_stderr_on_a_full_disk_keeps_the_finished_output_and_exits_0(
    tiny_engine_dir: Path, tmp_path: Path, scheduler: str
) -> None:
    """Every frame denoised, the bar's writes failing (ENOSPC): the output stays, exit status 0 (was
    deleted as "no space left on the device", exit 1 with ``--scheduler none``; exit 1 under Dask)."""
    inp, out = _h5(tmp_path / "in.h5", 24), tmp_path / "out.h5"
    with open("/dev/full", "w") as full:
        rc, stdout, _ = _run(
            ["denoise", str(inp), str(out), *_engine(tiny_engine_dir), *SCHEDULERS[scheduler]], full
        )
    assert rc == 0
    assert json.loads(stdout)["frames"] == 24  # the summary, on a stdout that works
    with h5py.File(out, "r") as f:
        assert f["denoised"].shape == (24, 32, 32) and np.isfinite(f["denoised"][:]).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5", "out.h5"]  # no partial, no lock


# ---- defect 2: a MemoryError is one line -------------------------------------------------------------
LIMIT = 32 << 30  # far above what the command needs to run, far below the 64 GiB batch it reads


@pytest.mark.timeout(300)
@pytest.mark.parametrize("scheduler", ["none", "dask"])
def test_out_of_memory_is_one_line_naming_the_limit(
    tiny_engine_dir: Path, tmp_path: Path, scheduler: str
) -> None:
    """A stack of all-zero 8192 x 8192 frames (134 MB on disk) read 1024 at a time: 64 GiB that an
    address-space limit of 32 GiB refuses, as ``ulimit -v`` refused the auditor's 64 MiB. Under Dask
    the worker's ``MemoryError`` came back to the client as a rich traceback, exit 1."""
    inp, out = tmp_path / "huge.h5", tmp_path / "out.h5"
    zero = zlib.compress(bytes(8192 * 8192), 9)  # one deflated all-zero frame, 65 kB: every chunk stored
    with h5py.File(inp, "w") as f:  # (a file storing no chunk is refused before any read since session 33)
        ds = f.create_dataset(
            "frames", (2048, 8192, 8192), "uint8", chunks=(1, 8192, 8192), compression="gzip"
        )
        for i in range(2048):
            ds.id.write_direct_chunk((i, 0, 0), zero)

    def limited() -> None:
        hup_default()
        resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))

    chunks = ["--scheduler", "none"] if scheduler == "none" else _dask(1024)  # 2 chunks: a real cluster
    args = ["denoise", str(inp), str(out), *_engine(tiny_engine_dir), *chunks, "--batch", "1024"]
    rc, _, err = _run(args, preexec=limited)
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith(f"error: {out}: out of memory (Unable to allocate 64.0 GiB"), (
        err
    )
    assert "ulimit -v) of 32768 MiB" in err[0] and "a lower --batch" in err[0], err
    if scheduler == "none":
        assert "nothing was kept" in err[0]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.h5"]
    else:  # the partial stays for a resume, as after any failure of the Dask path
        assert "--chunk-frames" in err[0] and f"kept in {out}.partial: run the same command" in err[0]
        assert (tmp_path / "out.h5.partial.json").exists()


# ---- defect 3: any file name -------------------------------------------------------------------------
LATIN1 = os.fsdecode(b"caf\xe9.h5")  # a Latin-1 byte, as copied from an old share: not UTF-8


@pytest.mark.timeout(300)
@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_an_input_named_with_a_byte_that_is_not_utf8_denoises(
    tiny_engine_dir: Path, tmp_path: Path, scheduler: str
) -> None:
    inp, out = _h5(tmp_path / LATIN1, 16), tmp_path / "out.h5"
    assert os.fsencode(inp).endswith(b"/caf\xe9.h5")  # a real file with a raw byte in its name
    rc, _, err = _run(["denoise", str(inp), str(out), *_engine(tiny_engine_dir), *SCHEDULERS[scheduler]])
    assert rc == 0, err  # was: 'utf-8' codec can't encode character '\udce9' ...: surrogates not allowed
    with h5py.File(out, "r") as f:
        assert f.attrs["source"].endswith("/caf\\xe9.h5:frames")  # the byte kept, written as \xe9
        assert f["denoised"].shape == (16, 32, 32)


@pytest.mark.timeout(300)
def test_a_utf8_input_name_under_an_ascii_locale_denoises(tiny_engine_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "données"
    folder.mkdir()
    inp, out = _h5(folder / "Pt–CeO₂ 25ms.h5", 8), folder / "o.h5"
    env = {**os.environ, "LC_ALL": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
    rc, _, err = _run(
        ["denoise", str(inp), str(out), *_engine(tiny_engine_dir), "--scheduler", "none"], env=env
    )
    assert rc == 0, err
    with h5py.File(out, "r") as f:
        assert f.attrs["source"].endswith("/données/Pt–CeO₂ 25ms.h5:frames")  # the name itself, not escapes


@pytest.mark.timeout(300)
def test_replay_offline_of_a_recording_named_with_a_raw_byte_leaves_no_partial(
    tiny_engine_dir: Path, tmp_path: Path
) -> None:
    rec = Recorder(
        RecordSettings(directory=tmp_path / "rec", min_free_bytes=0, compress_threads=0),
        Metrics(), card={"name": "tiny"}, run_config={},
        sampling={"pixel_size_A": 0.06, "dose_e_per_A2": 125.0, "counts_per_px": 0.45},
    )  # fmt: skip
    rec.write(RecordItem("series_start", "run/9"))
    for q in range(8):
        rec.write(RecordItem("raw", "run/9", q, 100.0 + 0.025 * q, np.ones((32, 32), np.uint16)))
    rec.write(RecordItem("series_end", "run/9"))
    named = tmp_path / "rec" / os.fsdecode(b"rec\xe9.nxs")
    (tmp_path / "rec" / "run_9.nxs").rename(named)
    out = tmp_path / "r2.h5"
    args = ["replay", str(named), "--offline", "--out", str(out), "--model", str(tiny_engine_dir)]
    rc, _, err = _run([*args, "--engine", "torch", "--device", "cpu", "--scheduler", "none"])
    assert rc == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r2.h5", "rec"]  # r2.h5.partial was left
    with h5py.File(out, "r") as f:
        assert f.attrs["source"].endswith("/rec\\xe9.nxs:raw/frames") and f["denoised"].shape == (8, 32, 32)


# ---- defect 4: names the file system refuses ---------------------------------------------------------
@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", ["name_260", "folder_260", "name_250"])
def test_an_output_name_too_long_is_one_line_naming_it(
    tiny_engine_dir: Path, tmp_path: Path, case: str
) -> None:
    """260 bytes in one component made ``Path.exists()`` raise in a traceback; 250 fits, but its lock
    (``.lock``) and temporary file do not, and the error named the internal ``OUT.lock``."""
    inp = _h5(tmp_path / "in.h5", 4)
    out = {
        "name_260": tmp_path / ("n" * 257 + ".h5"),
        "folder_260": tmp_path / ("d" * 260) / "x.h5",
        "name_250": tmp_path / ("n" * 247 + ".h5"),
    }[case]
    rc, _, err = _run(["denoise", str(inp), str(out), *_engine(tiny_engine_dir), "--scheduler", "none"])
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith(f"error: {out}: ") and ".lock" not in err[0], err
    if case == "name_250":
        assert "use a name of at most 246 bytes" in err[0], err
    else:
        assert "File name too long" in err[0] and "shorten it" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5"]


PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2


def _without_dac_override() -> None:
    """In the child: root loses the capabilities that let it write anywhere (``setpriv --bounding-set``)."""
    hup_default()
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
            if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.mark.timeout(300)
def test_a_read_only_output_folder_names_the_output_not_its_lock(
    tiny_engine_dir: Path, tmp_path: Path
) -> None:
    inp, ro = _h5(tmp_path / "in.h5", 4), tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    probe = [sys.executable, "-c", f"open({str(ro / 'probe')!r}, 'w')"]
    try:
        if subprocess.run(probe, preexec_fn=_without_dac_override, capture_output=True).returncode == 0:
            pytest.skip("cannot drop the capability to write a read-only folder here")
    except subprocess.SubprocessError:
        pytest.skip("cannot drop capabilities here (prctl refused)")
    out = ro / "x.h5"
    for scheduler in (["--scheduler", "none"], _dask(2)):
        args = ["denoise", str(inp), str(out), *_engine(tiny_engine_dir), *scheduler]
        rc, _, err = _run(args, preexec=_without_dac_override)
        assert rc == 2, err
        assert err == [
            f"error: {out}: cannot write in {ro} (Permission denied); nothing was written: write it elsewhere"
        ]
    ro.chmod(0o755)
    assert list(ro.iterdir()) == []


# ---- defect 9: an input that is no regular file ------------------------------------------------------
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("command", "kind"), [("denoise", "fifo"), ("denoise", "socket"), ("replay", "fifo")]
)
def test_an_input_that_is_no_regular_file_is_refused_at_once(
    tiny_engine_dir: Path, tmp_path: Path, command: str, kind: str
) -> None:
    """A FIFO with no writer blocked h5py's open for ever (the run is bounded: a block fails it)."""
    inp, out = tmp_path / ("in.h5" if command == "denoise" else "in.nxs"), tmp_path / "out.h5"
    sock = None
    if kind == "fifo":
        os.mkfifo(inp)
    else:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(inp))
    args = (
        ["denoise", str(inp), str(out)]
        if command == "denoise"
        else ["replay", str(inp), "--offline", "--out", str(out)]
    )
    try:
        rc, _, err = _run([*args, *_engine(tiny_engine_dir)])
    finally:
        if sock is not None:
            sock.close()
    assert rc == 2, err
    what = "a FIFO (named pipe)" if kind == "fifo" else "a socket"
    why = "not a regular file; name the stack's file (copy a stream into one first)"
    assert err == [f"error: {inp}: is {what}, {why}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [inp.name]
