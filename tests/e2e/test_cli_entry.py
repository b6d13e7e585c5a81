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


@pytest.mark.timeout(240)
def test_demo_replays_a_recording_at_its_sampling_in_strict_json(tmp_path, tiny_engine_dir) -> None:
    """``demo --source RECORDING``: the service runs at the recording's sampling (0.3 A, 1.8 counts/px
    here, not the 0.060 A / 0.45 defaults), no PSNR is claimed without a clean truth (null + a note),
    and a contradicting flag ends in one line. At 1.8 counts/px the paper PSNR of the synthetic run is
    finite (scaled to its 0.45 counts/px; it read Infinity) and the JSON is strict."""
    import json

    from typer.testing import CliRunner

    from sbd_stream.cli import app

    def strict(text: str) -> dict:
        return json.loads(text[text.index("{") :], parse_constant=lambda t: pytest.fail(f"JSON has {t}"))

    model = ["--model", str(tiny_engine_dir), "--engine", "torch", "--no-likelihood", "--rate", "50"]
    rec = tmp_path / "rec"
    first = ["demo", "--frames", "6", "--synthetic", "--shape", "64x64", "--pixel-size", "0.3"]
    res = CliRunner().invoke(app, [*first, "--counts-per-px", "1.8", "--record-dir", str(rec), *model])
    assert res.exit_code == 0, res.output
    made = strict(res.stdout)
    assert made["paper_psnr_denoised_db"] is not None and made["paper_psnr_scale"] == pytest.approx(0.25)
    (recording,) = rec.glob("*.nxs")
    res = CliRunner().invoke(app, ["demo", "--frames", "6", "--source", str(recording), *model])
    assert res.exit_code == 0, res.output
    again = strict(res.stdout)
    assert again["source"] == "recording" and again["frames_denoised"] == 6
    assert again["pixel_size_A"] == pytest.approx(0.3) and again["counts_per_px"] == pytest.approx(1.8)
    assert again["psnr_denoised_db"] is None and "clean truth" in again["psnr_note"]
    res = CliRunner().invoke(app, ["demo", "--source", str(recording), "--pixel-size", "0.06", *model])
    assert res.exit_code == 2 and "recorded at 0.3 A" in res.output and "Traceback" not in res.output


@pytest.mark.timeout(240)
def test_demo_refuses_what_its_emulator_cannot_send_and_a_busy_viewer_port_in_one_line(
    tiny_engine_dir,
) -> None:
    """A dose no uint16 count can hold ended in the emulator child's traceback and then the parent's
    AttributeError; a viewer port in use ended in a traceback. Both are one ``error:`` line, exit 2."""
    import socket

    from typer.testing import CliRunner

    from sbd_stream.cli import app

    base = ["demo", "--frames", "4", "--synthetic", "--shape", "64x64", "--no-likelihood", "--no-record"]
    base += ["--model", str(tiny_engine_dir), "--engine", "torch", "--pixel-size", "0.3"]
    res = CliRunner().invoke(app, [*base, "--counts-per-px", "100000"])
    assert res.exit_code == 2 and "does not fit uint16" in res.output and "Traceback" not in res.output
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = CliRunner().invoke(app, [*base, "--viewer", "--viewer-port", str(port)])
    assert res.exit_code == 2 and "--viewer-port" in res.output and "in use" in res.output, res.output
