"""Settings names and their case: checked as they are applied (audit h33).

pydantic-settings reads the environment without regard to case, so ``sbd_record__directory=/data`` set
the recording folder; but the check for names that look like a setting and name none looked at
upper-case ``SBD_`` names only, so ``sbd_lanes_live=false`` or ``sbd_records__directory=/data`` (a typo
in a lower-case name) were ignored without a word, against docs/service.md ("refused in one line, not
ignored"), and a lower-case name beside its upper-case twin won or lost by the environment's order.

The TOML file the other way round: its names are case-sensitive and every nested key was taken as
written, but a table or top-level key went through the same case-blind matching, so ``[DENOISE]`` was
applied and, beside ``[denoise]``, one of the two dropped without a word.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sbd_stream.config import load_settings


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("sbd_lanes_live", "SBD_LANES__LIVE"),
        ("sbd_records__directory", "no settings section 'records'"),
        ("Sbd_Stop_Timeout", "did you mean SBD_STOP_TIMEOUT_S"),
    ],
)
def test_a_lower_case_name_that_names_no_setting_is_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, said: str
) -> None:
    monkeypatch.setenv(name, "false")
    with pytest.raises(ValueError, match=said):
        load_settings()


def test_a_lower_case_name_is_applied_as_its_upper_case_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("sbd_lanes__live", "false")
    assert load_settings().lanes.live is False


def test_one_setting_given_twice_in_two_cases_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SBD_LANES__LIVE", "true")
    monkeypatch.setenv("sbd_lanes__live", "false")
    with pytest.raises(ValueError, match="one setting given twice"):
        load_settings()


def test_own_variables_in_any_case_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("sbd_engine_dir", "/x")
    monkeypatch.setenv("SBD_ENGINE_DIR", "/y")
    assert load_settings().lanes.live is True


@pytest.mark.parametrize(
    "text",
    [
        "[DENOISE]\nbatch_frames = 3\n",
        "[denoise]\nbatch_frames = 2\n[DENOISE]\nbatch_frames = 3\n",
        "Stop_Timeout_S = 3\nstop_timeout_s = 4\n",
    ],
)
def test_a_toml_name_in_another_case_is_refused(tmp_path: Path, text: str) -> None:
    p = tmp_path / "s.toml"
    p.write_text(text)
    with pytest.raises(ValueError, match="names are case-sensitive"):
        load_settings(p)


def test_toml_names_as_written_are_applied(tmp_path: Path) -> None:
    p = tmp_path / "s.toml"
    p.write_text("stop_timeout_s = 4\n[denoise]\nbatch_frames = 3\n")
    s = load_settings(p)
    assert (s.stop_timeout_s, s.denoise.batch_frames) == (4.0, 3)
