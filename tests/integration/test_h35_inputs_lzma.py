"""An lzma chunk of a zarr store may not make liblzma reserve more than a legitimate chunk of its size
needs (``sources/stack_zarr_bounded.lzma_memlimit``).

Session 35: the decoder reserves the dictionary an .xz block header declares, up to 4 GiB, before it
decodes a byte, and the chunk was decoded with no memory limit: a 16 kB chunk whose header declares
1.5 GiB was read (1.5 GiB reserved). The crafted chunks here are real .xz streams (numcodecs' own, their
dictionary byte rewritten and the header's CRC32 made good again), so liblzma with no limit decodes
them to the frame; the stores are written by zarr.
"""

from __future__ import annotations

import json
import lzma
import warnings
import zlib
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import zarr
import zarr.codecs.numcodecs as zn

from sbd_stream.sources.stack_zarr_bounded import lzma_memlimit
from sbd_stream.sources.stacks import StackError, open_stack

pytestmark = pytest.mark.integration
FRAMES = np.random.default_rng(3).poisson(1.0, (4, 64, 64)).astype("<f4")
CHUNK = 64 * 64 * 4
DICT_1536_MIB = 37
"""An LZMA2 dictionary byte: (2 | 37 & 1) << (37 // 2 + 11) = 1.5 GiB (the .xz format, 5.3.1)."""
DICT_96_MIB = 33
"""3 << 25 bytes: just over the 64 MiB of xz's largest preset."""


def _dict_size(b: int) -> int:
    return (2 | (b & 1)) << (b // 2 + 11)


def _redict(xz: bytes, code: int) -> bytes:
    """``xz`` (one .xz stream, one LZMA2 block) with its block header's dictionary byte set to ``code``
    and that header's CRC32 recomputed: a valid stream declaring another dictionary."""
    assert xz[:6] == b"\xfd7zXZ\x00"
    at = 12  # the block header follows the 12-byte stream header
    size = (xz[at] + 1) * 4
    head = bytearray(xz[at : at + size])
    flags = head[1]
    assert flags & 0x03 == 0 and not flags & 0xC0, "one filter, no sizes: as numcodecs writes it"
    assert head[2:4] == b"\x21\x01", "LZMA2, one byte of properties"
    head[4] = code
    head[-4:] = zlib.crc32(bytes(head[:-4])).to_bytes(4, "little")
    out = xz[:at] + bytes(head) + xz[at + size :]
    assert lzma.decompress(out) == lzma.decompress(xz), "still a valid stream of the same bytes"
    return out


def _lzma(fmt: int, preset: int | None = None) -> object:
    """numcodecs' LZMA as zarr v2 (``fmt`` 2) or v3 takes it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numcodecs' codecs "not in the Zarr version 3 specification"
        return numcodecs.LZMA(preset=preset) if fmt == 2 else zn.LZMA(preset=preset)


def _store(path: Path, fmt: int, comp: object) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numcodecs' codecs "not in the Zarr version 3 specification"
        arr = zarr.create_array(store=str(path), shape=FRAMES.shape, chunks=(1, 64, 64), dtype="<f4",
                                compressors=comp, zarr_format=fmt)  # fmt: skip
        arr[:] = FRAMES
    return path


def _chunk_file(path: Path, fmt: int) -> Path:
    return path / ("1.0.0" if fmt == 2 else "c/1/0/0")


def _read(path: Path) -> np.ndarray:
    s = open_stack(path)
    try:
        return np.concatenate([np.asarray(s.frames[i : i + 1]) for i in range(len(FRAMES))])
    finally:
        s.close()


@pytest.mark.parametrize("code", [DICT_1536_MIB, DICT_96_MIB])
@pytest.mark.parametrize("fmt", [2, 3])
def test_huge_dictionary_is_refused_in_one_line(fmt: int, code: int, tmp_path: Path) -> None:
    path = _store(tmp_path / "x.zarr", fmt, _lzma(fmt))
    chunk = _chunk_file(path, fmt)
    chunk.write_bytes(_redict(chunk.read_bytes(), code))
    with pytest.raises(StackError) as e:
        _read(path)
    msg = str(e.value)
    assert "\n" not in msg and "frames" in msg and "crafted?" in msg
    assert f"a lzma chunk declares a dictionary of over {64 << 20} bytes, the chunk holds {CHUNK}" in msg
    assert _dict_size(code) > lzma_memlimit(CHUNK)


def test_raw_lzma_whose_filters_declare_a_huge_dictionary_is_refused(tmp_path: Path) -> None:
    """FORMAT_RAW: the dictionary is the store's metadata's (liblzma takes no memory limit there)."""
    raw = [{"id": lzma.FILTER_LZMA2, "preset": 1}]
    path = _store(tmp_path / "x.zarr", 2, numcodecs.LZMA(format=lzma.FORMAT_RAW, filters=raw))
    assert np.array_equal(_read(path), FRAMES)  # as written: read
    meta = json.loads((path / ".zarray").read_text())
    meta["compressor"]["filters"][0]["dict_size"] = 1536 << 20
    (path / ".zarray").write_text(json.dumps(meta))
    with pytest.raises(StackError, match=r"declares a dictionary of over \d+ bytes.*crafted\?"):
        _read(path)


@pytest.mark.parametrize("preset", [*range(10), 9 | lzma.PRESET_EXTREME])
@pytest.mark.parametrize("fmt", [2, 3])
def test_every_preset_still_reads_as_written(fmt: int, preset: int, tmp_path: Path) -> None:
    path = _store(tmp_path / "x.zarr", fmt, _lzma(fmt, preset))
    got = _read(path)
    assert got.dtype == FRAMES.dtype and got.tobytes() == FRAMES.tobytes()


def test_a_dictionary_of_the_largest_preset_or_the_chunk_is_allowed() -> None:
    """64 MiB (xz -9) for any chunk; a chunk over it, the smallest header dictionary that holds it."""
    assert lzma_memlimit(CHUNK) >= (64 << 20) + (64 << 10)  # what liblzma needs at -9
    assert lzma_memlimit(CHUNK) < _dict_size(DICT_96_MIB)
    for n in (64 << 20, (64 << 20) + 1, 100 << 20, 3 << 26, (3 << 26) + 1):
        need = min(_dict_size(b) for b in range(41) if _dict_size(b) >= n)
        assert need <= lzma_memlimit(n) - (1 << 20) < 2 * n


def _lzma_tiff(path: Path, code: int | None) -> Path:
    """``FRAMES`` as an LZMA TIFF (tifffile's own), each strip's dictionary byte set to ``code``."""
    import tifffile

    tifffile.imwrite(path, FRAMES, compression="lzma", photometric="minisblack")
    if code is None:
        return path
    raw = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        strips = [(o, c) for p in tif.pages for o, c in zip(p.dataoffsets, p.databytecounts, strict=True)]
    for offset, count in strips:
        raw[offset : offset + count] = _redict(bytes(raw[offset : offset + count]), code)
    path.write_bytes(bytes(raw))
    return path


def test_lzma_tiff_strip_declaring_a_huge_dictionary_is_refused(tmp_path: Path) -> None:
    from sbd_stream.sources.stack_tiff import read_whole

    path = _lzma_tiff(tmp_path / "x.tif", DICT_1536_MIB)
    for read in (_read, read_whole):
        with pytest.raises(ValueError) as e:  # StackError is a ValueError; read_whole's own too
            read(path)
        msg = str(e.value)
        assert "\n" not in msg and "declares a dictionary of over" in msg and "crafted?" in msg


@pytest.mark.parametrize("code", [None, 26])  # as tifffile writes it (preset 6: 8 MiB); 64 MiB (preset 9)
def test_lzma_tiff_still_reads_as_written(code: int | None, tmp_path: Path) -> None:
    from sbd_stream.sources.stack_tiff import read_whole

    path = _lzma_tiff(tmp_path / "x.tif", code)
    assert _read(path).tobytes() == FRAMES.tobytes()
    assert read_whole(path).tobytes() == FRAMES.tobytes()
