"""Every way of starting the CLI registers every command (live and scale-out ones live elsewhere)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["sbd_stream", "sbd_stream.cli"])
def test_python_dash_m_lists_every_command(module: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    for command in ("denoise", "info", "export", "serve", "replay", "emulate", "demo", "merge"):
        assert f" {command} " in out, (command, out)


def test_evidence_frames_turn_likelihood_maps_on_and_refuse_no_likelihood() -> None:
    import typer

    from sbd_stream.cli.options import likelihood as _likelihood

    assert _likelihood(None, 4) == {"enabled": True, "evidence_frames": 4}
    assert _likelihood(None, None) == {"enabled": None, "evidence_frames": None}  # settings decide
    assert _likelihood(True, 0) == {"enabled": True, "evidence_frames": 0}
    with pytest.raises(typer.BadParameter, match="no-likelihood"):
        _likelihood(False, 2)
    from typer.testing import CliRunner

    from sbd_stream.cli import app

    res = CliRunner().invoke(app, ["demo", "--frames", "4", "--no-likelihood", "--evidence-frames", "2"])
    assert res.exit_code == 2 and "no-likelihood" in res.output


@pytest.mark.timeout(180)
def test_demo_says_whether_its_recording_was_kept(tmp_path, tiny_engine_dir) -> None:
    """``lanes.complete.recording.kept``: true with --record-dir (the files are there), false without."""
    import json

    from typer.testing import CliRunner

    from sbd_stream.cli import app

    base = ["demo", "--frames", "6", "--synthetic", "--shape", "64x64", "--rate", "50", "--no-likelihood"]
    base += ["--model", str(tiny_engine_dir), "--engine", "torch"]
    for extra, kept in ((["--record-dir", str(tmp_path / "rec")], True), ([], False)):
        res = CliRunner().invoke(app, base + extra)
        assert res.exit_code == 0, res.output
        summary = json.loads(res.stdout[res.stdout.index("{") :])
        assert summary["lanes"]["complete"]["recording"]["kept"] is kept
    assert list((tmp_path / "rec").glob("*.nxs"))
