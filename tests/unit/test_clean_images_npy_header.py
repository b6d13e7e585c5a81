"""`sbd-train evaluate-images` skips an NPY whose header dict cannot be parsed, and goes on.

A fuzz audit gave it a folder holding an NPY whose header dict is ``{{{{``: numpy's header parser
raised ``tokenize.TokenError`` (no ValueError), which no reader caught, and the whole run ended in a
traceback instead of listing that file under ``skipped`` as its ``--help`` promises.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from training.evaluate.clean_images import read_images


def _garbage_npy(path: Path) -> Path:
    head = b"{{{{".ljust(118) + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(head)) + head + bytes(64))
    return path


def test_an_npy_with_an_unparsable_header_is_skipped_and_listed(tmp_path: Path) -> None:
    np.save(tmp_path / "good.npy", np.ones((64, 64), np.float32))
    bad = _garbage_npy(tmp_path / "bad.npy")
    skipped: list[dict[str, str]] = []
    images = read_images(tmp_path, skipped=skipped)
    assert [name for name, _ in images] == ["good.npy"]
    assert skipped == [{"path": str(bad), "reason": skipped[0]["reason"]}]
    assert "NumPy" in skipped[0]["reason"] and "\n" not in skipped[0]["reason"]
