"""A recording part is laid out in a file this process creates, never through a link someone left.

Audit h30 (security): the part is laid out under the predictable hidden name
``.<name>.<pid>.creating`` and that name was opened with ``h5py.File(..., "w")``, which follows a
symbolic link and truncates its target. Another user of a shared recording folder could leave such
a link pointing at any file the service's user may write (its CURVE secret key, a finished
recording) and the service wiped it. Real HDF5 files in a real folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from sbd_stream.config import RecordSettings
from sbd_stream.formats.recording import AcqFile


def _settings(folder: Path) -> RecordSettings:
    return RecordSettings(directory=folder, compression="none")


def test_a_link_left_at_the_temporary_name_does_not_overwrite_its_target(tmp_path: Path) -> None:
    folder = tmp_path / "recordings"
    folder.mkdir()
    victim = tmp_path / "service.key_secret"
    victim.write_text("secret-key = precious\n")
    part = folder / "acq-1.nxs"
    (folder / f".{part.name}.{os.getpid()}.creating").symlink_to(victim)

    af = AcqFile(part, (8, 8), np.dtype(np.uint16), _settings(folder), {"acq": "acq-1", "created": 1.0})
    af.f.close()

    assert victim.read_text() == "secret-key = precious\n"  # before: an empty HDF5 file
    assert not part.is_symlink()
    with h5py.File(part, "r") as f:  # the part itself is a recording of its own
        assert f.attrs["acq"] == "acq-1"
    assert not (folder / f".{part.name}.{os.getpid()}.creating").exists()


def test_a_dangling_link_at_the_temporary_name_creates_nothing_at_its_target(tmp_path: Path) -> None:
    folder = tmp_path / "recordings"
    folder.mkdir()
    target = tmp_path / "elsewhere.h5"
    part = folder / "acq-2.nxs"
    (folder / f".{part.name}.{os.getpid()}.creating").symlink_to(target)

    af = AcqFile(part, (8, 8), np.dtype(np.uint16), _settings(folder), {"acq": "acq-2", "created": 1.0})
    af.f.close()

    assert not target.exists()  # before: the part's layout was written there through the link
    assert part.is_file() and not part.is_symlink()
