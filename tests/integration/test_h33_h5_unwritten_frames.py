"""A plain HDF5 stack declaring far more frames than its file stores is refused (``limits.unstored_problem``).

Why (session 33): a 10 kB chunked file declaring (10^8, 64, 64) with no chunk written made ``denoise``
denoise 10^8 blank frames (days). The rule is the zarr reader's: refused when what is stored cannot cover
half the declared frames and more than 1024 would read as the fill value. Real files, real HDF5.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from sbd_stream.sources.stacks import StackError, open_stack


def _stack(path: Path, n: int, written: int, **kw: object) -> Path:
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("frames", shape=(n, 8, 8), dtype="u2", **kw)
        if written:
            ds[:written] = np.ones((written, 8, 8), "u2")
    return path


def test_chunked_stack_with_nothing_written_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("frames", shape=(10**8, 64, 64), dtype="u2", chunks=(1, 64, 64))
    assert path.stat().st_size < 20_000
    with pytest.raises(StackError, match=r"x.h5:frames: declares 409600000000 pixels but the file stores 0;"):
        open_stack(path)


def test_mostly_unwritten_chunked_and_unallocated_contiguous_stacks_are_refused(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="1997 or more of its 2000 frames would read as the fill value"):
        open_stack(_stack(tmp_path / "c.h5", 2000, 3, chunks=(1, 8, 8)))
    with pytest.raises(StackError, match="declares 128000 pixels but the file stores 0"):
        open_stack(_stack(tmp_path / "contig.h5", 2000, 0))  # contiguous, never allocated


@pytest.mark.parametrize(
    ("n", "written", "kw"),
    [
        (2000, 2000, {"chunks": (1, 8, 8)}),  # written whole
        (2000, 2000, {"chunks": (4, 8, 8), "compression": "gzip"}),  # compressed
        (2000, 2000, {}),  # contiguous
        (2000, 1000, {"chunks": (1, 8, 8)}),  # half written: the rest is the fill value, as HDF5 reads it
        (1000, 0, {"chunks": (1, 8, 8)}),  # no more than 1024 frames blank
        (3, 3, {"compact": True}),
    ],
)
def test_stacks_stored_enough_still_open(tmp_path: Path, n: int, written: int, kw: dict) -> None:
    if kw.pop("compact", False):
        plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        plist.set_layout(h5py.h5d.COMPACT)
        path = tmp_path / "compact.h5"
        with h5py.File(path, "w") as f:
            sid = h5py.h5s.create_simple((n, 8, 8))
            dsid = h5py.h5d.create(f.id, b"frames", h5py.h5t.STD_U16LE, sid, dcpl=plist)
            h5py.Dataset(dsid)[:] = np.ones((n, 8, 8), "u2")
    else:
        path = _stack(tmp_path / "ok.h5", n, written, **kw)
    stack = open_stack(path)
    try:
        assert stack.shape == (n, 8, 8)
        assert np.asarray(stack.frames[n - 1 : n]).shape == (1, 8, 8)
    finally:
        stack.close()


def test_virtual_and_externally_linked_stacks_still_open(tmp_path: Path) -> None:
    data = _stack(tmp_path / "run_data_000001.h5", 4, 4, chunks=(1, 8, 8))
    master = tmp_path / "run_master.h5"
    layout = h5py.VirtualLayout(shape=(4, 8, 8), dtype="u2")
    layout[:] = h5py.VirtualSource(str(data), "frames", shape=(4, 8, 8))
    with h5py.File(master, "w") as f:
        f["entry/data/data_000001"] = h5py.ExternalLink(data.name, "/frames")
        f.create_virtual_dataset("virtual", layout, fillvalue=0)
    for name in ("entry/data/data_000001", "virtual"):
        stack = open_stack(master, name)
        try:
            assert stack.shape == (4, 8, 8)
            assert int(np.asarray(stack.frames[0:4]).sum()) == 4 * 64
        finally:
            stack.close()
