"""Mutation round h29c on formats/recording_parts.py: the naming and finding rules the existing tests left
loose (each test below failed on a mutant of the module and passes on it as it is).

Real files in a temporary folder: ``free_path`` looks at what the folder holds, ``recording_parts`` and
``part_attr`` open real HDF5 files (written here with h5py the way older and current recorders did).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from sbd_stream.formats.recording_parts import free_path, part_attr, part_number, recording_parts

pytestmark = pytest.mark.integration


def _h5(path: Path, **attrs: object) -> Path:
    with h5py.File(path, "w") as f:
        for k, v in attrs.items():
            f.attrs[k] = v
    return path


def test_a_continuation_is_numbered_above_the_previous_part_even_where_lower_names_are_free(
    tmp_path: Path,
) -> None:
    """``after`` (the previous part's number) bounds the number from below: a part 2 whose part 1 took
    ``_0005`` is ``_0006``, never a free ``_0002`` or ``_0005`` (readers walk the numbers upwards, so a
    lower number reads part 2 before part 1)."""
    assert free_path(tmp_path, "s", 2, after=5) == tmp_path / "s_0006.nxs"
    assert free_path(tmp_path, "s", 3, after=1) == tmp_path / "s_0003.nxs"
    assert free_path(tmp_path, "s", 1) == tmp_path / "s_0001.nxs"
    assert free_path(tmp_path, "s", 1, ".h5") == tmp_path / "s_0001.h5"


def test_the_last_four_digit_number_is_a_continuation_name_too(tmp_path: Path) -> None:
    assert free_path(tmp_path, "s", 9999) == tmp_path / "s_9999.nxs"


def test_a_first_file_whose_timestamped_name_is_taken_too_takes_the_next_counter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs of one acquisition in one second (one process): the counter keeps their names apart."""
    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "20260101-000000")
    (tmp_path / "s.nxs").touch()
    first = free_path(tmp_path, "s", 0)
    assert first.name == f"s_20260101-000000_{os.getpid()}_1.nxs"
    first.touch()
    second = free_path(tmp_path, "s", 0)
    assert second.name == f"s_20260101-000000_{os.getpid()}_2.nxs"


@pytest.mark.parametrize(
    ("name", "number"),
    [
        ("scan.nxs", 0),
        ("scan_0003.nxs", 3),
        ("scan_0001_0003.nxs", 3),
        ("scan_0001.h5", 1),
        ("scan_12345.nxs", 0),
    ],
)
def test_part_number_is_the_last_four_digits_of_the_name_only(name: str, number: int) -> None:
    assert part_number(Path(name)) == number


def test_a_byte_string_attribute_reads_as_text_and_its_parts_stay_together(tmp_path: Path) -> None:
    """A recorder that wrote ``run_uid`` as a fixed-length byte string and a part holding it as text are
    one run: ``part_attr`` answers text for both."""
    first = _h5(tmp_path / "s.nxs", run_uid="abc", part=0)
    _h5(tmp_path / "s_0001.nxs", run_uid=np.bytes_(b"abc"), part=1)
    assert part_attr(tmp_path / "s_0001.nxs", "run_uid") == "abc"
    assert recording_parts(first) == [first, tmp_path / "s_0001.nxs"]


def test_a_given_file_that_cannot_be_opened_is_one_error_naming_it(tmp_path: Path) -> None:
    stub = tmp_path / "s.nxs"
    stub.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 40)  # a 48-byte stub, as a SIGKILL at creation leaves
    with pytest.raises(OSError, match=r"s\.nxs"):
        recording_parts(stub)


def test_older_files_without_part_or_run_attributes_keep_the_name_rule(tmp_path: Path) -> None:
    """No ``part`` attribute: a ``_000k`` name is a middle part, which yields itself and what follows."""
    files = [_h5(tmp_path / n) for n in ("s.nxs", "s_0001.nxs", "s_0002.nxs")]
    assert recording_parts(files[0]) == files
    assert recording_parts(files[1]) == files[1:]


def test_a_part_without_run_uid_beside_parts_with_one_is_kept_either_way(tmp_path: Path) -> None:
    """``run_uid`` missing on either side (a recorder before it, a part rewritten by a tool): the name
    rule decides, as the docstring says, instead of leaving the part out."""
    a = tmp_path / "a"
    b = tmp_path / "b"
    a.mkdir()
    b.mkdir()
    first = _h5(a / "s.nxs", run_uid="u1", part=0)
    cont = _h5(a / "s_0001.nxs", part=1)
    assert recording_parts(first) == [first, cont]
    first = _h5(b / "s.nxs", part=0)
    cont = _h5(b / "s_0001.nxs", run_uid="u1", part=1)
    assert recording_parts(first) == [first, cont]


def test_a_middle_part_of_an_acquisition_named_like_a_part_continues_its_own_run(tmp_path: Path) -> None:
    """Acquisition ``scan_0001``'s part 1 is ``scan_0001_0001.nxs``: only its last ``_NNNN`` is the part
    number, so its successor is ``scan_0001_0002.nxs``, not ``scan_0002.nxs``."""
    names = ("scan_0001.nxs", "scan_0001_0001.nxs", "scan_0001_0002.nxs")
    files = [_h5(tmp_path / n, run_uid="u", part=k) for k, n in enumerate(names)]
    _h5(tmp_path / "scan_0002.nxs", run_uid="u", part=2)  # a copy under a wrong name: not walked
    assert recording_parts(files[1]) == files[1:]
    assert recording_parts(files[0]) == files
