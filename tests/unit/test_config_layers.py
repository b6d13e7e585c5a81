"""How settings layers combine (TOML < SBD_* environment < flags), and what each layer may not say.

Found by an audit of the configuration surface: the shipped TOML's dose and a ``--counts-per-px`` flag
were refused as "not both"; infinite values started the service (``complete_timeout_s = inf`` then
crashed its shutdown); ``SBD_LANES_LIVE=false`` (one underscore) was silently ignored; an error in the
TOML file was reported under a flag the user never typed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from sbd_stream.cli import app
from sbd_stream.config import load_settings
from sbd_stream.config_merge import check_env_names


def _toml(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "s.toml"
    p.write_text(text)
    return p


def test_a_higher_layer_gives_the_dose_in_either_unit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = _toml(tmp_path, "[detector]\ndose_e_per_A2 = 125.0\n")
    flag = load_settings(toml, {"detector": {"counts_per_px": 0.9}}).detector
    assert (flag.dose_e_per_A2, flag.counts_per_px) == (None, 0.9)
    monkeypatch.setenv("SBD_DETECTOR__COUNTS_PER_PX", "0.6")
    env = load_settings(toml, {}).detector
    assert (env.dose_e_per_A2, env.counts_per_px) == (None, 0.6)
    over_env = load_settings(toml, {"detector": {"dose_e_per_A2": 200.0}}).detector
    assert (over_env.dose_e_per_A2, over_env.counts_per_px) == (200.0, None)
    assert over_env.pixel_size_A == pytest.approx(0.06)  # the rest of the table is kept
    shipped = Path(__file__).resolve().parents[2] / "deploy" / "sbd-stream.toml"
    monkeypatch.delenv("SBD_DETECTOR__COUNTS_PER_PX")
    assert load_settings(shipped, {"detector": {"counts_per_px": 0.9}}).detector.vacuum_counts == 0.9


@pytest.mark.parametrize(
    "text",
    ["[lanes]\ncomplete_timeout_s = inf\n", "[detector]\ndose_e_per_A2 = inf\n", "stop_timeout_s = inf\n"],
)
def test_infinite_values_are_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(ValidationError, match="finite"):
        load_settings(_toml(tmp_path, text), {})


def test_sbd_variables_that_look_like_settings_but_name_none_are_refused() -> None:
    sections, fields = {"record", "lanes"}, {"record", "lanes", "stop_timeout_s"}
    for bad, words in (
        ("SBD_RECORDS__DIRECTORY", "no settings section 'records'"),
        ("SBD_LANES_LIVE", "SBD_LANES__LIVE"),
        ("SBD_STOP_TIMEOUT", "did you mean SBD_STOP_TIMEOUT_S"),
        ("SBD_STOP_TIMEOUT_SEC", "did you mean SBD_STOP_TIMEOUT_S"),
    ):
        with pytest.raises(ValueError, match=words):
            check_env_names({bad: "x"}, sections, fields)
    fine = ["SBD_RECORD__DIRECTORY", "SBD_STOP_TIMEOUT_S", "SBD_ENGINE_DIR", "SBD_CACHE_DIR", "SBD_FUZZ_SEED"]
    fine += ["SBD_ENGINE", "SBD_PRECISION", "SBD_TRACEBACK", "SBD_ORT_THREADS", "SBD_HOME"]
    check_env_names(dict.fromkeys(fine, "1"), sections, fields)


def test_an_error_names_the_flag_only_when_the_flag_gave_the_value(tmp_path: Path) -> None:
    runner = CliRunner()
    toml = _toml(tmp_path, "[denoise]\nbatch_frames = 0\n")
    res = runner.invoke(app, ["serve", "--config", str(toml), "--no-record"])
    assert res.exit_code == 2 and "denoise.batch_frames" in res.output and "--batch" not in res.output
    res = runner.invoke(app, ["serve", "--pixel-size", "0", "--no-record"])
    assert res.exit_code == 2 and "--pixel-size" in res.output
    res = runner.invoke(app, ["serve", "--no-record"], env={"SBD_LANES_LIVE": "false"})
    assert res.exit_code == 2 and "SBD_LANES__LIVE" in res.output and "Traceback" not in res.output


def test_replay_flags_replace_the_recordings_dose_in_either_unit() -> None:
    """``replay REC --counts-per-px 0.9`` over a recording that states its dose per area was refused as
    "not both" (the recording's sampling sits under the flags); a new pixel size keeps the counts."""
    from sbd_stream.cli.options import Flags, detector_section

    rec = {"pixel_size_A": 0.06, "dose_e_per_A2": 125.0}
    assert detector_section(Flags(recorded=rec, counts_per_px=0.9)) == {
        "pixel_size_A": 0.06,
        "counts_per_px": 0.9,
    }
    assert detector_section(Flags(recorded=rec, dose=250.0))["dose_e_per_A2"] == 250.0
    both = {"pixel_size_A": 0.06, "counts_per_px": 0.45, "dose_e_per_A2": 125.0}
    assert detector_section(Flags(recorded=both, pixel_size=0.12)) == {
        "pixel_size_A": 0.12,
        "counts_per_px": 0.45,
    }


def test_a_flag_over_an_invalid_sbd_value_wins_and_errors_name_the_variables_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The environment was validated on its own before the flags were merged: a valid ``--pixel-size``
    over ``SBD_DETECTOR__PIXEL_SIZE_A=-1`` was refused, and the error blamed the flag."""
    monkeypatch.setenv("SBD_DETECTOR__PIXEL_SIZE_A", "-1")
    assert load_settings(None, {"detector": {"pixel_size_A": 0.06}}).detector.pixel_size_A == 0.06
    res = CliRunner().invoke(app, ["serve", "--no-record"])
    assert res.exit_code == 2 and "detector.pixel_size_A" in res.output and "--pixel-size" not in res.output


def test_a_recording_cut_short_at_creation_is_one_line_for_every_reader(tmp_path: Path) -> None:
    import h5py
    import numpy as np

    from sbd_stream.formats.recording import open_recording

    good = tmp_path / "good.h5"
    with h5py.File(good, "w", libver="latest") as f:
        f["raw/frames"] = np.zeros((2, 8, 8), np.uint16)
    stub = tmp_path / "killed.nxs"
    stub.write_bytes(good.read_bytes()[:48])
    with pytest.raises(OSError, match="cut short"):
        open_recording(stub)
    for args in (
        ["export", str(stub), "--to", "npy", "--out", str(tmp_path / "x.npy")],
        ["replay", str(stub)],
    ):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 2 and "cut short" in res.output and "Traceback" not in res.output, res.output


def test_both_dose_flags_are_refused_by_their_flag_names() -> None:
    """``--dose 125 --counts-per-px 0.45`` named the setting (``detector: ... dose_e_per_A2 ...``), not
    what the user typed."""
    res = CliRunner().invoke(app, ["serve", "--no-record", "--dose", "125", "--counts-per-px", "0.45"])
    assert res.exit_code == 2 and "--dose and --counts-per-px" in res.output


@pytest.mark.parametrize("value", ["1", "2", "4", "8"])
def test_orientations_from_the_environment(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """The environment's text ``'8'`` was refused by the Literal of ints ("should be 1, 2, 4 or 8")."""
    monkeypatch.setenv("SBD_DENOISE__ORIENTATIONS", value)
    assert load_settings(None, {}).denoise.orientations == int(value)
    monkeypatch.setenv("SBD_DENOISE__ORIENTATIONS", "3")
    with pytest.raises(ValidationError):
        load_settings(None, {})


def test_the_older_policy_key_in_a_file_does_not_beat_a_flag_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``denoise.policy`` was applied after the layers were merged: a file's ``policy = "lossless"``
    beat ``--live`` and ``SBD_LANES__LIVE=true`` (flags > environment > file everywhere else)."""
    toml = _toml(tmp_path, '[denoise]\npolicy = "lossless"\n')
    assert load_settings(toml, {}).lanes.live is False  # alone, it still decides
    assert load_settings(toml, {"lanes": {"live": True}}).lanes.live is True
    monkeypatch.setenv("SBD_LANES__LIVE", "true")
    assert load_settings(toml, {}).lanes.live is True
    monkeypatch.delenv("SBD_LANES__LIVE")
    monkeypatch.setenv("SBD_DENOISE__POLICY", "latest")
    assert load_settings(_toml(tmp_path, "[lanes]\nlive = false\n"), {}).lanes.live is True
    monkeypatch.delenv("SBD_DENOISE__POLICY")
    both = _toml(tmp_path, '[denoise]\npolicy = "lossless"\n[lanes]\nlive = true\n')
    with pytest.raises(ValueError, match=r"disagree; drop denoise\.policy"):
        load_settings(both, {})
    res = CliRunner().invoke(app, ["serve", "--config", str(both)])
    assert res.exit_code == 2 and "disagree" in res.output, res.output
    for text in ("t", "y", "on", "1", "TRUE"):  # every spelling pydantic reads as true
        spelled = _toml(tmp_path, f'[denoise]\npolicy = "lossless"\n[lanes]\nlive = "{text}"\n')
        with pytest.raises(ValueError, match="disagree"):
            load_settings(spelled, {})
    agree = _toml(tmp_path, '[denoise]\npolicy = "latest"\n[lanes]\nlive = true\n')
    assert load_settings(agree, {}).lanes.live is True


def test_the_default_stop_fits_the_shipped_supervisors_30_s(tmp_path: Path) -> None:
    """A config file from before ``[lanes]`` (an upgrade keeps /etc/sbd-stream/sbd-stream.toml) took
    the code's complete_timeout_s, then 300 s: systemd and compose killed every stop after 30 s."""
    import re

    root = Path(__file__).resolve().parents[2]
    unit = (root / "deploy" / "sbd-stream.service").read_text()
    compose = (root / "deploy" / "compose.yaml").read_text()
    unit_s = float(re.search(r"^TimeoutStopSec=(\d+)s", unit, re.M).group(1))
    compose_s = float(re.search(r"stop_grace_period: (\d+)s", compose).group(1))
    old_file = _toml(tmp_path, 'stop_timeout_s = 10\n[denoise]\npolicy = "latest"\n')
    for s in (load_settings(None, {}), load_settings(old_file, {})):
        assert s.stop_timeout_s + s.lanes.complete_timeout_s < min(unit_s, compose_s)
