"""`emulate --source` / `demo --source` with a recording the emulator cannot send: one line, exit 2.

Why: the recording's frame size went into the emulator's settings by ``model_copy(update=...)``, which
skips validation, so a 1 x 20000 or 0 x 0 recording passed the 1-16384 check that ``--shape`` gets;
`emulate` printed its banner and ended in a ``ProtocolError`` traceback (exit 1), and `demo` in a false
"did not start in 120 s". A file with ``/raw/frames`` but no ``/raw/complete`` (or a malformed
``/raw`` dataset) was a ``KeyError`` / ``IndexError`` traceback. Real HDF5 files, real CLI runs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import free_port
from typer.testing import CliRunner

from sbd_stream.cli.app import app
from sbd_stream.formats.limits import RecordingError
from sbd_stream.sources.emulator_recording import for_recording, recorded_layout
from sbd_stream.sources.emulator_settings import EmulatorSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]  # real sockets and files; never a hang


def _raw(path: Path, **datasets: np.ndarray | None) -> Path:
    """An HDF5 file with a ``/raw`` group of ``datasets`` (None: an empty group under that name)."""
    with h5py.File(path, "w") as f:
        g = f.create_group("raw")
        for name, data in datasets.items():
            if data is None:
                g.create_group(name)
            else:
                g.create_dataset(name, data=data)
    return path


def _frames(h: int, w: int, n: int = 3) -> dict[str, np.ndarray]:
    return {"frames": np.ones((n, h, w), np.uint16), "complete": np.ones(n, np.uint8)}


def _free_port() -> int:
    """conftest.free_port: drawn outside the kernel's ephemeral range and checked on every address."""
    return free_port()


def _emulate(source: Path):
    ep = f"tcp://127.0.0.1:{_free_port()}"
    args = [
        "emulate",
        "--source",
        str(source),
        "--endpoint",
        ep,
        "--wait",
        "0",
        "--frames",
        "2",
        "--rate",
        "0",
    ]
    return CliRunner().invoke(app, args)


def _one_line_error(res, *words: str) -> str:
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert res.exit_code == 2 and len(errors) == 1, (res.exit_code, res.output, res.exception)
    assert "Traceback" not in res.output and "emulating" not in res.output, res.output  # before the banner
    assert all(w in errors[0] for w in words), errors
    return errors[0]


@pytest.mark.parametrize(("h", "w"), [(1, 20000), (0, 0), (16385, 1)])
def test_a_recorded_frame_size_the_wire_cannot_carry_is_one_line(tmp_path: Path, h: int, w: int) -> None:
    src = _raw(tmp_path / "bad.h5", **_frames(h, w, n=1 if h * w > 10**4 else 3))
    _one_line_error(_emulate(src), "bad.h5", f"{h}x{w}", "1 to 16384")
    with pytest.raises(RecordingError, match=f"bad.h5 holds frames of {h}x{w} pixels"):
        for_recording(EmulatorSettings(source=src))  # the demo's check (cli/demo.py) goes through here


def test_the_settings_made_for_a_recording_are_validated(tmp_path: Path) -> None:
    """What ``for_recording`` returns passes the model's own checks (it used to be an unchecked copy)."""
    src = _raw(tmp_path / "ok.h5", **_frames(24, 32))
    cfg, note = for_recording(EmulatorSettings(source=src))
    assert cfg.shape == (24, 32) and cfg.dtype == "uint16" and "not stated" in note
    assert EmulatorSettings.model_validate(cfg.model_dump()) == cfg


def test_demo_refuses_such_a_recording_before_it_starts(tmp_path: Path) -> None:
    """`demo --source` said "did not start in 120 s" after 4 s (the child had exited): now one line,
    exit 2, before the engine loads or a child starts."""
    src = _raw(tmp_path / "wide.h5", **_frames(1, 20000))
    res = subprocess.run(
        [sys.executable, "-m", "sbd_stream", "demo", "--source", str(src), "--frames", "3", "--no-record"],
        capture_output=True,
        text=True,
        timeout=100,
        cwd=tmp_path,
    )
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert res.returncode == 2 and len(errors) == 1, (res.returncode, res.stderr[-3000:])
    assert "Traceback" not in res.stderr and "wide.h5" in errors[0] and "1x20000" in errors[0], errors


@pytest.mark.parametrize(
    ("datasets", "words"),
    [
        ({"frames": np.ones((3, 8, 8), np.uint16)}, ("no /raw/complete",)),
        ({"frames": np.ones((8, 8), np.uint16), "complete": np.ones(3, np.uint8)}, ("2-D dataset",)),
        ({"frames": None, "complete": np.ones(3, np.uint8)}, ("/raw/frames is a group",)),
        ({"frames": np.ones((3, 8, 8), np.uint16), "complete": None}, ("/raw/complete", "1-D")),
        (
            {
                "frames": np.ones((3, 8, 8), np.uint16),
                "complete": np.ones(3, np.uint8),
                "seq": np.ones((3, 2)),
            },
            ("/raw/seq", "1-D"),
        ),
        ({"frames": np.ones((3, 8, 8), np.complex64), "complete": np.ones(3, np.uint8)}, ("complex64",)),
        ({"frames": np.ones((3, 8, 8), np.uint16), "complete": np.zeros(3, np.uint8)}, ("no complete raw",)),
    ],
    ids=["no-complete", "frames-2d", "frames-group", "complete-group", "seq-2d", "complex", "none-marked"],
)
def test_a_recording_missing_or_malformed_raw_datasets_is_one_line(
    tmp_path: Path, datasets: dict, words: tuple[str, ...]
) -> None:
    """docs/service.md: every recording has ``raw/complete`` ("the number of trustworthy rows"), so a
    file without it is refused, not taken as "all complete"; the rows re-sent are the trusted ones."""
    src = _raw(tmp_path / "odd.h5", **datasets)
    _one_line_error(_emulate(src), "odd.h5", *words)


def test_only_trusted_rows_are_resent(tmp_path: Path) -> None:
    """Rows after the last one marked complete (never written, or cut short) are not sent."""
    frames = np.stack([np.full((8, 8), q, np.uint16) for q in range(4)])
    src = _raw(tmp_path / "r.h5", frames=frames, complete=np.array([1, 1, 0, 0], np.uint8))
    assert recorded_layout(src) == ((8, 8), "uint16")
    from sbd_stream.sources.emulator import FrameSource

    counts = FrameSource(EmulatorSettings(source=src, shape=(8, 8)))._counts
    assert [int(c[0, 0]) for c in counts] == [0, 1]


def test_a_raw_dataset_instead_of_a_group_is_no_recording(tmp_path: Path) -> None:
    """``"frames" in f["raw"]`` on a 2-D dataset was numpy's "truth value of an array ... is ambiguous"."""
    src = tmp_path / "flat.h5"
    with h5py.File(src, "w") as f:
        f.create_dataset("raw", data=np.ones((3, 4)))
    assert recorded_layout(src) is None
    _one_line_error(_emulate(src), "flat.h5", "neither a simulated dataset (/images) nor a recording (/raw)")
