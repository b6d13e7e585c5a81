"""HDF5 datasets whose bytes live in other files (external raw storage) are never read.

Audit h30 (security): ``h5py.create_dataset(..., external=[("/etc/passwd", 0, n)])`` makes a 1 kB
file whose "frames" are the bytes of any file the reader may open; ``denoise`` read them and wrote
them, denoised, into its output, and a recording's ``raw`` group built so would have had ``replay`` /
``export`` copy them verbatim. Real HDF5 files; the "secret" is a file of our own.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from sbd_stream.formats.limits import RecordingError, trusted_rows
from sbd_stream.sources.stack_headers import StackError
from sbd_stream.sources.stacks import open_stack


@pytest.fixture()
def secret(tmp_path: Path) -> Path:
    p = tmp_path / "id_ed25519"
    p.write_bytes(b"-----BEGIN OPENSSH PRIVATE KEY-----\n" + bytes(range(256)) * 4)
    return p


def test_a_stack_kept_in_another_file_is_refused(tmp_path: Path, secret: Path) -> None:
    bad = tmp_path / "stack.h5"
    with h5py.File(bad, "w") as f:
        f.create_dataset("frames", shape=(4, 16, 16), dtype="uint8", external=[(str(secret), 0, 1024)])
    with pytest.raises(StackError, match="kept outside the file"):
        open_stack(bad)

    good = tmp_path / "plain.h5"  # the same stack stored in the file still opens
    with h5py.File(good, "w") as f:
        f.create_dataset("frames", data=np.ones((4, 16, 16), np.uint8))
    stack = open_stack(good)
    try:
        assert stack.shape == (4, 16, 16)
    finally:
        stack.close()


def _raw_group(f: h5py.File, secret: Path | None) -> h5py.Group:
    g = f.create_group("raw")
    if secret is None:
        g.create_dataset("frames", data=np.ones((4, 16, 16), np.uint8))
    else:
        g.create_dataset("frames", shape=(4, 16, 16), dtype="uint8", external=[(str(secret), 0, 1024)])
    g.create_dataset("complete", data=np.ones(4, np.uint8))
    g.create_dataset("seq", data=np.arange(4, dtype=np.int64))
    g.create_dataset("ts", data=np.arange(4, dtype=np.float64))
    return g


def test_a_recording_whose_frames_are_kept_in_another_file_is_refused(tmp_path: Path, secret: Path) -> None:
    with h5py.File(tmp_path / "rec.nxs", "w") as f:
        g = _raw_group(f, secret)
        with pytest.raises(RecordingError, match="kept outside the file"):
            trusted_rows(g, "rec.nxs: raw")
    with h5py.File(tmp_path / "plain.nxs", "w") as f:
        assert trusted_rows(_raw_group(f, None), "plain.nxs: raw") == 4


def test_a_recording_column_kept_in_another_file_is_refused(tmp_path: Path, secret: Path) -> None:
    with h5py.File(tmp_path / "rec.nxs", "w") as f:
        g = _raw_group(f, None)
        del g["ts"]
        g.create_dataset("ts", shape=(4,), dtype="float64", external=[(str(secret), 0, 32)])
        with pytest.raises(RecordingError, match="ts: its data is kept outside"):
            trusted_rows(g, "rec.nxs: raw")
