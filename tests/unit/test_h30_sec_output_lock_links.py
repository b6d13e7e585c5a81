"""The lock of an output is never written through a link someone else left at its name.

Audit h30 (security), reproduced with a real ``denoise``: a symbolic link at ``out.h5.lock`` pointing
at another file made the job truncate that file and write its pid into it (``os.open`` followed the
link, then ``ftruncate`` and ``write``). A hard link does the same. Real files in a real folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sbd_stream.formats.output_lock import OutputBusy, lock_path, output_lock

PRECIOUS = "precious: not a pid\n"


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim.txt"
    victim.write_text(PRECIOUS)
    return victim


def test_a_symbolic_link_at_the_lock_name_is_refused_and_its_target_kept(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    output = tmp_path / "shared" / "out.h5"
    output.parent.mkdir()
    lock_path(output).symlink_to(victim)
    with pytest.raises(OutputBusy, match="symbolic link"), output_lock(output):
        pass
    assert victim.read_text() == PRECIOUS  # before: the job's pid


def test_a_dangling_link_at_the_lock_name_creates_nothing_at_its_target(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "made-by-the-job"
    target.parent.mkdir()
    output = tmp_path / "out.h5"
    lock_path(output).symlink_to(target)
    with pytest.raises(OutputBusy, match="symbolic link"), output_lock(output):
        pass
    assert not target.exists()


def test_a_hard_link_at_the_lock_name_is_refused_and_its_file_kept(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    output = tmp_path / "out.h5"
    os.link(victim, lock_path(output))
    with pytest.raises(OutputBusy, match="2 names"), output_lock(output):
        pass
    assert victim.read_text() == PRECIOUS
