"""`sbd-stream demo`: a scene flag with ``--synthetic`` or ``--source DATASET.h5`` is refused (audit h33).

Why: only the held scene drifts, changes focus and plays an event. With a lattice or a dataset's images
the flags were dropped silently: ``demo --synthetic --event-frame 3`` ran to the end, exit 0, and no
column vanished (docs/emulator.md, "Option checks": events that would not happen are refused). Now one
line, exit 2, before the engine loads (an engine path that does not exist shows it is never reached).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sbd_stream.cli import app

DATASET = Path(__file__).resolve().parents[2] / "sbd_stream" / "samples" / "pt_ceo2_test.h5"


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--synthetic", "--event-frame", "3"], "--event-frame: only the held scene"),
        (["--synthetic", "--drift", "1"], "--drift: only the held scene"),
        (["--source", str(DATASET), "--event-frame", "2", "--event", "hop"], "drop --event-frame --event"),
        (["--source", str(DATASET), "--focus-rate", "0"], "--focus-rate: only the held scene"),
    ],
)
def test_scene_flags_without_the_scene_are_one_line(tmp_path: Path, flags: list[str], said: str) -> None:
    args = ["demo", "--frames", "6", "--shape", "64x64", "--no-record", "--model", str(tmp_path / "none")]
    args += flags
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output  # was 0 with --synthetic: the run went on without any event
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and said in lines[0], res.output


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--drift", "2"], "--drift: only the held scene"),
        (["--event-frame", "2", "--event", "hop"], "drop --event-frame --event"),
        (["--scene", "x.h5"], "--scene: only the held scene"),
    ],
)
def test_emulate_source_refuses_scene_flags_in_one_line(flags: list[str], said: str) -> None:
    """``emulate --source`` re-sends a recording's frames: a scene flag was dropped without a word
    (``emulate --source REC --drift 2`` sent the frames undrifted, exit 0). The check runs before the
    source is opened, so the bundled dataset stands in for a recording."""
    args = ["emulate", "--source", str(DATASET), "--frames", "2", "--endpoint", "tcp://127.0.0.1:1", *flags]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and said in lines[0], res.output
    assert "--source" in lines[0] and "plays its frames" in lines[0]
