"""Where `serve` and `demo` will write, tried before the engine loads, and the `error:` line's colour.

A record folder that cannot be created or written ended `serve` / `demo` in a 40-line traceback once
the engine had loaded (an existing read-only folder: a healthy-looking service that dropped every
recording), and `demo --json-out` to an unwritable path failed after the whole run. Each is now one
`error:` line naming the path and the reason, exit 2, before the engine loads (no `serving:` banner,
no emulator). As root, modes do not stop writes, so the read-only cases skip there; a path under a
regular file fails for everyone.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest

from sbd_stream.sinks.writable import file_problem, folder_problem

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "sbd_stream"]


def _modes_apply() -> bool:
    """Whether a folder's mode stops this process writing in it (not as root with CAP_DAC_OVERRIDE)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        os.chmod(d, 0o555)
        try:
            Path(d, "probe").touch()
        except PermissionError:
            return True
        finally:
            os.chmod(d, 0o755)
    return False


as_root_modes_do_not_apply = pytest.mark.skipif(
    not _modes_apply(), reason="this user writes into read-only folders (root)"
)


def _run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=180, cwd=cwd, env={**os.environ, **env}
    )


def _refused(r: subprocess.CompletedProcess[str], *names: str) -> str:
    """The one ``error:`` line of a refusal before the engine loaded; each of ``names`` in it."""
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "serving:" not in r.stderr and "emulating" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, r.stderr
    for name in names:
        assert name in lines[0], lines[0]
    assert r.stdout == ""
    return lines[0]


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    f = tmp_path / "afile"
    f.write_text("not a folder\n")
    return f


@pytest.mark.timeout(300)
def test_serve_refuses_a_record_folder_it_cannot_create(
    tmp_path: Path, a_file: Path, tiny_engine_dir: Path
) -> None:
    engine = ["--model", str(tiny_engine_dir), "--engine", "onnxruntime", "--metrics-port", "0"]
    line = _refused(
        _run(["serve", "--record-dir", str(a_file / "sub"), *engine], tmp_path), str(a_file / "sub")
    )
    assert "Not a directory" in line
    line = _refused(_run(["serve", "--record-dir", str(a_file), *engine], tmp_path), str(a_file))
    assert "not a folder" in line
    assert not (a_file / "sub").exists() and a_file.read_text() == "not a folder\n"


@pytest.mark.timeout(300)
def test_replay_refuses_its_record_folder_before_the_engine_loads(
    tmp_path: Path, a_file: Path, tiny_engine_dir: Path
) -> None:
    """``replay --record-dir`` was one line already, but from the recorder's mkdir after the engine had
    loaded (``[Errno 20] Not a directory: ...``); now it is the same check as serve's, first."""
    import numpy as np

    from sbd_stream.config import RecordSettings
    from sbd_stream.metrics import Metrics
    from sbd_stream.sinks.recorder import Recorder, RecordItem

    rec = Recorder(
        RecordSettings(directory=tmp_path / "rec", min_free_bytes=0, compression="none"), Metrics()
    )
    rec.write(RecordItem("raw", "acq", 0, 100.0, np.zeros((32, 24), np.uint16)))
    rec.close_all()
    (recording,) = (tmp_path / "rec").glob("*.nxs")
    args = ["replay", str(recording), "--record-dir", str(a_file / "sub"), "--model", str(tiny_engine_dir)]
    line = _refused(_run([*args, "--engine", "onnxruntime", "--pixel-size", "0.3"], tmp_path), str(a_file))
    assert line.startswith("error: --record-dir")


@pytest.mark.timeout(300)
@as_root_modes_do_not_apply
def test_serve_refuses_a_read_only_record_folder_and_a_read_only_working_folder(
    tmp_path: Path, tiny_engine_dir: Path
) -> None:
    """An existing read-only folder started a service that dropped every frame's recording; the
    default ``recordings/`` under a read-only working folder (a unit's ``WorkingDirectory=/``) was a
    traceback."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    engine = ["--model", str(tiny_engine_dir), "--engine", "onnxruntime", "--metrics-port", "0"]
    try:
        line = _refused(_run(["serve", "--record-dir", str(ro), *engine], tmp_path), str(ro))
        assert "Permission denied" in line
        line = _refused(_run(["serve", *engine], ro), "recordings")
        assert "Permission denied" in line
    finally:
        ro.chmod(0o755)
    assert list(ro.iterdir()) == []


@pytest.mark.timeout(300)
def test_demo_refuses_a_record_folder_and_a_json_out_it_cannot_write(
    tmp_path: Path, a_file: Path, tiny_engine_dir: Path
) -> None:
    demo = [
        "demo",
        "--frames",
        "5",
        "--shape",
        "64x64",
        "--model",
        str(tiny_engine_dir),
        "--engine",
        "onnxruntime",
    ]
    line = _refused(_run([*demo, "--record-dir", str(a_file / "sub")], tmp_path), "--record-dir", str(a_file))
    assert "Not a directory" in line
    missing = tmp_path / "no-such-folder" / "summary.json"
    _refused(_run([*demo, "--json-out", str(missing)], tmp_path), "--json-out", str(missing))
    _refused(_run([*demo, "--json-out", str(tmp_path)], tmp_path), "--json-out", "is a folder")
    _refused(_run([*demo, "--json-out", str(a_file / "x.json")], tmp_path), "--json-out", "not a folder")
    assert not missing.parent.exists()


@as_root_modes_do_not_apply
def test_the_checks_see_read_only_folders_and_files(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "kept.json").write_text("{}")
    (ro / "kept.json").chmod(0o444)
    ro.chmod(0o555)
    try:
        assert "Permission denied" in (folder_problem(ro) or "")
        assert "Permission denied" in (folder_problem(ro / "sub") or "")
        assert "Permission denied" in (file_problem(ro / "new.json") or "")
        assert "Permission denied" in (file_problem(ro / "kept.json") or "")
    finally:
        ro.chmod(0o755)


def test_the_checks_leave_nothing_behind(tmp_path: Path, a_file: Path) -> None:
    assert folder_problem(tmp_path / "a" / "b") is None and not (tmp_path / "a").exists()
    assert folder_problem(tmp_path) is None and sorted(tmp_path.iterdir()) == [a_file]
    assert file_problem(tmp_path / "new.json") is None and not (tmp_path / "new.json").exists()
    assert file_problem(a_file) is None and a_file.read_text() == "not a folder\n"  # not truncated
    assert "not a folder" in (folder_problem(a_file) or "")


def _on_a_terminal(args: list[str], cwd: Path, **env: str) -> str:
    """What the command writes to a terminal (a pseudo-terminal as stdout and stderr)."""
    main, sub = pty.openpty()
    proc = subprocess.Popen([*CLI, *args], stdout=sub, stderr=sub, cwd=cwd, env={**os.environ, **env})
    os.close(sub)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([main], [], [], 120)
            if not ready:
                break
            try:
                data = os.read(main, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(main)
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.timeout(240)
def test_no_color_and_a_dumb_terminal_get_a_plain_error_line(tmp_path: Path) -> None:
    """The ``error:`` line was red on every terminal, under NO_COLOR=1 (no-color.org) and TERM=dumb too."""
    args = ["replay", str(tmp_path / "no-such-recording.nxs")]
    red = _on_a_terminal(args, tmp_path, TERM="xterm-256color", NO_COLOR="")
    assert "\x1b[31m" in red and "error:" in red  # on a colour terminal it is red, as before
    for env in ({"NO_COLOR": "1", "TERM": "xterm-256color"}, {"TERM": "dumb", "NO_COLOR": ""}):
        plain = _on_a_terminal(args, tmp_path, **env)
        assert "error:" in plain and "\x1b[" not in plain, (env, plain)


def test_a_failed_check_leaves_nothing_and_an_unreachable_path_is_a_reason(tmp_path: Path) -> None:
    """A name too long under new folders: mkdir made ``new/sub`` before failing and the check left them;
    a path whose stat fails (a name too long, a folder this user cannot enter) was a traceback."""
    deep = tmp_path / "new" / "sub" / ("x" * 300)
    assert folder_problem(deep) is not None
    assert not (tmp_path / "new").exists()
    long_name = tmp_path / ("y" * 300)
    assert "File name too long" in (folder_problem(long_name / "rec") or "")
    assert "File name too long" in (file_problem(long_name / "summary.json") or "")


def test_stacks_named_like_a_correction_are_not_calibrations() -> None:
    """Whole names only: ``gain_corrected`` or ``masked_frames`` stacks were refused as calibrations."""
    from sbd_stream.sources.stack_hdf5 import is_calibration

    for name in ("entry/pixel_mask", "flatfield", "flat_field", "gain", "dark", "countrate_correction_table"):
        assert is_calibration(name), name
    for name in ("gain_corrected", "masked_frames", "dark_subtracted", "darkfield_series", "entry/data/data"):
        assert not is_calibration(name), name
