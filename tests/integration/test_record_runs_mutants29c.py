"""Mutation round h29c on sinks/record_runs.py (``RunBook``): the part names, part numbers and segments a
run's parts get, where the recorder tests left them loose (each test below failed on a mutant of the
module and passes on it as it is).

A real folder: ``RunBook.next_part`` names a part after what the folder holds; the files a recorder would
create are made here as empty files, so the names alone are checked.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sbd_stream.sinks.record_runs import RunBook

pytestmark = pytest.mark.integration


def _open(book: RunBook, acq: str, d: Path) -> tuple[Path, dict[str, object]]:
    path, attrs = book.next_part(acq, d, ".nxs")
    path.touch()  # the recorder lays the part out under that name
    return path, attrs


def test_a_boundary_before_any_part_leaves_the_first_part_in_segment_0(tmp_path: Path) -> None:
    """Nothing recorded yet (a new acquisition, or its first part undone: its file could not be
    created): a series_start there opens no new segment, the first part is segment 0."""
    book = RunBook()
    book.boundary("a")
    assert _open(book, "a", tmp_path)[1]["segment"] == 0
    book = RunBook()
    book.next_part("a", tmp_path, ".nxs")
    book.undo("a")
    book.boundary("a")
    assert _open(book, "a", tmp_path)[1] == {"run_uid": book.runs["a"].uid, "part": 0, "segment": 0}


def test_an_acquisition_named_like_a_part_continues_in_its_own_0001(tmp_path: Path) -> None:
    """``scan_0001``'s first part is ``scan_0001.nxs``; part 1 follows it as ``scan_0001_0001.nxs``
    (its first file's number, 1, is no predecessor's part number), where the reader looks for it."""
    book = RunBook()
    names = [_open(book, "scan_0001", tmp_path)[0].name for _ in range(3)]
    assert names == ["scan_0001.nxs", "scan_0001_0001.nxs", "scan_0001_0002.nxs"]


def test_a_boundary_starts_one_new_segment_and_rolls_after_it_inherit_it(tmp_path: Path) -> None:
    book = RunBook()
    assert _open(book, "a", tmp_path)[1] == {"run_uid": book.runs["a"].uid, "part": 0, "segment": 0}
    book.boundary("a")
    assert _open(book, "a", tmp_path)[1]["segment"] == 1
    assert _open(book, "a", tmp_path)[1]["segment"] == 1  # a size roll: the same series
    assert [p.name for p in book.runs["a"].paths] == ["a.nxs", "a_0001.nxs", "a_0002.nxs"]


def test_continuations_are_named_after_a_timestamped_first_part(tmp_path: Path) -> None:
    """``a.nxs`` belongs to an earlier run: this run's first part gets a timestamped name and its
    continuations follow that name, where a reader given the first part looks for them."""
    (tmp_path / "a.nxs").touch()
    book = RunBook()
    first, _ = _open(book, "a", tmp_path)
    assert first.name != "a.nxs"
    cont, attrs = _open(book, "a", tmp_path)
    assert cont == tmp_path / f"{first.stem}_0001.nxs" and attrs["part"] == 1


def test_a_part_is_numbered_above_its_predecessor_when_a_lower_name_came_free(tmp_path: Path) -> None:
    """``a_0001`` / ``a_0002`` belong to others when part 1 opens (it takes ``a_0003``); ``a_0002`` is
    then removed. Part 2 takes ``a_0004``: ``a_0002`` would be read before part 1."""
    for k in (1, 2):
        (tmp_path / f"a_{k:04d}.nxs").touch()
    book = RunBook()
    _open(book, "a", tmp_path)
    assert _open(book, "a", tmp_path)[0].name == "a_0003.nxs"
    (tmp_path / "a_0002.nxs").unlink()
    assert _open(book, "a", tmp_path)[0].name == "a_0004.nxs"


def test_an_undone_part_leaves_its_name_and_number_to_the_next(tmp_path: Path) -> None:
    book = RunBook()
    _open(book, "a", tmp_path)
    path, attrs = book.next_part("a", tmp_path, ".nxs")  # its file could not be created
    book.undo("a")
    again, attrs_again = book.next_part("a", tmp_path, ".nxs")
    assert (again, attrs_again) == (path, attrs)
