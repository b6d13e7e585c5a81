"""Stacks kept open per worker process (``sources/stack_cache``): a page-by-page TIFF was opened again for
every 16-frame chunk, each open walking every page: 2,000 frames took 61 s to read, 76 s to denoise
under the default scheduler against 3.8 s in process (``python -m benchmarks.bench_stack_read``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

from sbd_stream.sources import stack_cache
from sbd_stream.sources.stacks import StackError


@pytest.fixture(autouse=True)
def _closed():
    stack_cache.close_all()
    yield
    stack_cache.close_all()


def _pages(path: Path, frames: np.ndarray) -> Path:
    with tifffile.TiffWriter(path) as tw:
        for fr in frames:
            tw.write(fr)
    return path


@pytest.fixture
def opens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths ``open_stack`` was really called for (the real function runs)."""
    seen: list[str] = []
    real = stack_cache.open_stack

    def counted(path: Path, dataset: str | None = None, **kwargs: bool):
        seen.append(Path(path).name)
        return real(path, dataset, **kwargs)

    monkeypatch.setattr(stack_cache, "open_stack", counted)
    return seen


def test_a_page_by_page_tiff_is_opened_once_for_all_its_chunks(tmp_path: Path, opens: list[str]) -> None:
    frames = np.random.default_rng(0).poisson(0.45, (40, 12, 10)).astype(np.uint16)
    p = _pages(tmp_path / "pages.tif", frames)
    got = [stack_cache.read_rows(p, None, a, min(40, a + 16)) for a in range(0, 40, 16)]
    np.testing.assert_array_equal(np.concatenate(got), frames)
    assert opens == ["pages.tif"]
    assert all(g.flags.writeable for g in got)  # torch refuses read-only memory
    assert stack_cache.close_all() == 1 and stack_cache.close_all() == 0


def test_a_file_rewritten_between_jobs_is_opened_again(tmp_path: Path, opens: list[str]) -> None:
    """Keyed by the file's identity, not only its name: a new acquisition under the same name is read."""
    a = np.zeros((4, 8, 8), np.uint16)
    p = _pages(tmp_path / "s.tif", a)
    np.testing.assert_array_equal(stack_cache.read_rows(p, None, 0, 4), a)
    b = np.full((6, 8, 8), 3, np.uint16)
    tmp = _pages(tmp_path / "new.tif", b)
    os.replace(tmp, p)
    np.testing.assert_array_equal(stack_cache.read_rows(p, None, 0, 6), b)
    assert opens == ["s.tif", "s.tif"]


def test_at_most_max_open_stay_open_least_recent_closed_first(tmp_path: Path, opens: list[str]) -> None:
    paths = [tmp_path / f"{k}.npy" for k in range(stack_cache.MAX_OPEN + 1)]
    for k, p in enumerate(paths):
        np.save(p, np.full((2, 4, 4), k, np.uint16))
    for p in paths:
        stack_cache.read_rows(p, None, 0, 1)
    assert len(stack_cache._OPEN) == stack_cache.MAX_OPEN
    stack_cache.read_rows(paths[-1], None, 1, 2)  # still open
    assert stack_cache.read_rows(paths[0], None, 0, 1)[0, 0, 0] == 0  # closed first: opened again
    assert opens == [p.name for p in paths] + [paths[0].name]


def test_a_damaged_page_is_the_readers_error_and_the_file_is_not_kept(
    tmp_path: Path, opens: list[str]
) -> None:
    frames = np.random.default_rng(1).poisson(3, (3, 32, 32)).astype(np.uint16)
    p = tmp_path / "z.tif"
    with tifffile.TiffWriter(p) as tw:
        for fr in frames:
            tw.write(fr, compression="zlib")
    with tifffile.TiffFile(p) as t:
        off = t.pages[1].dataoffsets[0]
    raw = bytearray(p.read_bytes())
    raw[off + 2 : off + 40] = bytes(38)  # inside the file: the decoder fails, the layout checks pass
    p.write_bytes(bytes(raw))
    np.testing.assert_array_equal(stack_cache.read_rows(p, None, 0, 1), frames[:1])
    with pytest.raises(StackError, match="frame 1"):
        stack_cache.read_rows(p, None, 1, 2)
    assert stack_cache._OPEN == {}
