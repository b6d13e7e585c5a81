"""Mutation round h29c on cli/replay_offline.py: which option sets ``replay`` refuses, and how it words
them (each test failed on a mutant of the module, or on the module before the fix, and passes now).

The defect found: ``v not in (None, False)`` took a number given as 0 for an option not given (``0 ==
False``), so ``replay --offline --evidence-frames 0`` dropped the option without a word, as audit h29 B's
``--limit 5`` was dropped before.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from sbd_stream.cli.replay_offline import check_replay_file, found, offline_conflicts

NOT_GIVEN = {
    "--realtime": False,
    "--output": None,
    "--evidence-frames": None,
    "--limit": None,
    "--live": False,
}


def test_offline_with_no_live_option_given_is_accepted() -> None:
    assert offline_conflicts(True, NOT_GIVEN, Path("out.h5"), None) is None
    assert offline_conflicts(True, NOT_GIVEN, Path("out.h5"), 3) is None
    assert offline_conflicts(False, NOT_GIVEN, None, None) is None


def test_a_live_option_given_as_0_is_refused_with_offline() -> None:
    problem = offline_conflicts(True, {**NOT_GIVEN, "--evidence-frames": 0}, Path("out.h5"), None)
    assert problem is not None and problem.startswith("--evidence-frames does not apply to --offline"), (
        problem
    )


def test_one_option_is_it_and_two_are_them() -> None:
    one = offline_conflicts(True, {**NOT_GIVEN, "--limit": 5}, Path("out.h5"), None)
    assert one is not None and "--limit does not apply" in one and "drop it," in one, one
    two = offline_conflicts(True, {**NOT_GIVEN, "--limit": 5, "--live": True}, Path("out.h5"), None)
    assert two is not None and "--limit, --live do not apply" in two and "drop them," in two, two


@pytest.mark.parametrize(
    ("out", "dask_workers", "named"),
    [(Path("o.h5"), None, "--out"), (None, 2, "--dask-workers"), (Path("o.h5"), 2, "--out, --dask-workers")],
)
def test_offline_only_options_without_offline_are_named(
    out: Path | None, dask_workers: int | None, named: str
) -> None:
    assert offline_conflicts(False, NOT_GIVEN, out, dask_workers) == (
        f"{named} applies to --offline only; add --offline, or drop {named}"
    )


def test_a_path_below_a_regular_file_is_not_found_rather_than_an_error(tmp_path: Path) -> None:
    """``rec.nxs/x``: the OS answers "not a directory", which is "no such file" for the user."""
    (tmp_path / "rec.nxs").touch()
    assert found(tmp_path / "rec.nxs" / "x") is False
    assert found(tmp_path / "rec.nxs") is True


def test_a_folder_given_as_the_recording_ends_the_command_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "rec.nxs").touch()
    check_replay_file(tmp_path / "rec.nxs")  # a regular file: on to the replay
    with pytest.raises(typer.Exit):
        check_replay_file(tmp_path)
    assert "is a folder; name a file" in capsys.readouterr().err
