"""A zlib or LZMA TIFF strip (or tile) that decodes to more bytes than it holds is refused before it is
decoded whole, in bounded memory; legitimate zlib / LZMA / uncompressed stacks read as tifffile reads them.

Why (session 36): tifffile decodes such a strip with ``zlib.decompress`` / ``lzma.decompress``, no bound,
then keeps the bytes its strip needs: a 1 MB file of three 64 x 64 frames, one strip of them 1 GiB of
zeros deflated, was read (exit 0) after a peak of 2.1 GB (``sources/tiff_strips.py``). The crafted files
are tifffile's own, one strip's offset and byte count pointed at a stream appended to the file.
"""

from __future__ import annotations

import json
import lzma
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile

from sbd_stream.sources.stack_tiff import read_whole
from sbd_stream.sources.stacks import StackError, open_stack
from sbd_stream.sources.tiff_strips import read_page, segment_bytes

pytestmark = pytest.mark.integration  # real files, a child process
ROOT = Path(__file__).resolve().parents[2]
FRAMES = np.random.default_rng(0).poisson(3.0, (3, 64, 64)).astype(np.uint16)
INFLATE = 128 << 20
"""What the crafted strip decodes to: 128 MiB from a 64 x 64 page's 8 kB."""
PEAK_SLACK = 64 << 20
"""How much more a refused read may peak at than reading the legitimate file of the same frames."""


def _stream(codec: str, size: int) -> bytes:
    if codec == "lzma":
        return lzma.compress(bytes(size), preset=0)  # the fastest: 2 s for 64 MiB
    c = zlib.compressobj(9)
    return b"".join(c.compress(bytes(1 << 20)) for _ in range(size >> 20)) + c.flush()


def _legit(path: Path, codec: str, **kw: object) -> Path:
    tifffile.imwrite(path, FRAMES, photometric="minisblack", compression=codec, **kw)
    return path


def _bomb(path: Path, codec: str, size: int = INFLATE, page: int = 1, **kw: object) -> Path:
    """``FRAMES`` as a ``codec`` TIFF (one strip a page unless told), page ``page``'s first strip or
    tile replaced by a stream of ``size`` zeros appended to the file."""
    kw = {"rowsperstrip": 64} | kw if "tile" not in kw else kw
    _legit(path, codec, **kw)
    strip = _stream(codec, size)
    with tifffile.TiffFile(path) as tif:
        p = tif.pages[page]
        tags = (p.tags[324], p.tags[325]) if p.is_tiled else (p.tags[273], p.tags[279])
        where = [(t.valueoffset, int(t.dtype), t.count) for t in tags]
    b = bytearray(path.read_bytes())
    for (at, dtype, count), value in zip(where, (len(b), len(strip)), strict=True):
        if count == 1 and dtype == 3:  # one SHORT inline: made a LONG (a strip of over 64 kB)
            b[at - 6 : at - 4], dtype = struct.pack("<H", 4), 4
        fmt = "<I" if dtype == 4 else "<H"
        b[at : at + struct.calcsize(fmt)] = struct.pack(fmt, value)
    path.write_bytes(bytes(b) + strip)
    return path


def _read(path: Path) -> np.ndarray:
    s = open_stack(path)
    try:
        return np.concatenate([np.asarray(s.frames[i : i + 1]) for i in range(len(s.frames))])
    finally:
        s.close()


_PEAK = """
import json, os, resource, sys
from pathlib import Path
from sbd_stream.sources.stacks import StackError, open_stack
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
error = ""
try:
    s = open_stack(Path(sys.argv[1]))
    for i in range(len(s.frames)):
        s.frames[i : i + 1]
except StackError as e:
    error = str(e)
print(json.dumps({"error": error, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
os._exit(0)
"""


def _peak(path: Path) -> tuple[str, int]:
    """Reading every frame of ``path`` in a fresh process: (its StackError or "", its peak RSS in bytes).
    RSS, not tracemalloc: zlib's and liblzma's buffers are what grow, and tracemalloc stopped while
    another thread allocates crashes this CPython (tests/helpers_memory.py)."""
    run = subprocess.run([sys.executable, "-c", _PEAK, str(path)], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)  # fmt: skip
    assert run.returncode == 0, run.stderr[-800:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    return str(out["error"]), int(out["peak"])


@pytest.mark.parametrize("codec", ["zlib", "lzma"])
def test_a_strip_inflating_beyond_its_page_is_refused_in_bounded_memory(codec: str, tmp_path: Path) -> None:
    bomb = _bomb(tmp_path / "bomb.tif", codec)
    assert bomb.stat().st_size < 400_000
    error, peak = _peak(bomb)
    name = "zlib" if codec == "zlib" else "LZMA"
    assert "\n" not in error, error
    assert error.startswith(f"{bomb}: frame 1: its {name} strip 0 of "), error
    assert "decodes to more than the 8192 bytes a strip holds; not decoded (crafted?)" in error
    legit_error, legit_peak = _peak(_legit(tmp_path / "legit.tif", codec))
    assert legit_error == ""
    assert peak < legit_peak + PEAK_SLACK, (peak, legit_peak)  # before: 128 MiB decoded, twice held


@pytest.mark.parametrize("codec", ["zlib", "lzma"])
def test_evaluate_images_reader_refuses_it_too(codec: str, tmp_path: Path) -> None:
    bomb = _bomb(tmp_path / "bomb.tif", codec, size=16 << 20, page=2)
    with pytest.raises(StackError) as e:
        read_whole(bomb)
    assert "\n" not in str(e.value)
    assert f"bomb.tif: page 2: its {'zlib' if codec == 'zlib' else 'LZMA'} strip 0 of" in str(e.value)


def test_a_tile_inflating_beyond_its_size_is_refused(tmp_path: Path) -> None:
    """Tiles are decoded by tifffile (``read_page`` builds strips only): each is counted first."""
    bomb = _bomb(tmp_path / "bomb.tif", "zlib", size=48 << 20, tile=(16, 16))
    with pytest.raises(
        StackError, match=r"frame 1: its zlib tile 0 of \d+ bytes decodes to more than the 512 "
    ):
        _read(bomb)
    assert np.array_equal(_read(_legit(tmp_path / "t.tif", "zlib", tile=(16, 16))), FRAMES)


def test_a_second_lzma_stream_after_a_small_one_is_counted(tmp_path: Path) -> None:
    """``lzma.decompress`` decodes every stream that follows another: a first of 8 kB hid none."""
    path = _legit(tmp_path / "x.tif", "lzma", rowsperstrip=64)
    b = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        p = tif.pages[1]
        (o,), (c,), at = p.dataoffsets, p.databytecounts, p.tags[279].valueoffset
        dtype = int(p.tags[279].dtype)
    strip = bytes(b[o : o + c]) + _stream("lzma", 32 << 20)
    b[p.tags[273].valueoffset : p.tags[273].valueoffset + 4] = struct.pack("<I", len(b))
    if dtype == 3:
        b[at - 6 : at - 4] = struct.pack("<H", 4)
    b[at : at + 4] = struct.pack("<I", len(strip))
    path.write_bytes(bytes(b) + strip)
    with pytest.raises(
        StackError, match=r"frame 1: its LZMA strip 0 of \d+ bytes decodes to more than the 8192"
    ):
        _read(path)


LAYOUTS = [
    ("zlib", "uint16", {}),
    ("deflate", "uint16", {}),  # 32946
    ("lzma", "uint16", {}),
    ("zlib", "uint16", {"predictor": 2}),
    ("lzma", "int16", {"predictor": 2}),
    ("zlib", "uint8", {"predictor": 2, "rowsperstrip": 10}),  # a last strip of 4 rows
    ("zlib", "float32", {"rowsperstrip": 7}),
    ("zlib", ">u2", {"predictor": 2, "rowsperstrip": 16}),  # big-endian file
    ("lzma", ">f4", {}),
    ("zlib", "uint16", {"tile": (16, 16)}),  # tiles: tifffile decodes them
    (None, "uint16", {}),
]


@pytest.mark.parametrize(("codec", "dtype", "kw"), LAYOUTS, ids=lambda v: str(v))
def test_legitimate_stacks_read_as_tifffile_reads_them(
    codec: str | None, dtype: str, kw: dict, tmp_path: Path
) -> None:
    a = (FRAMES * (1.5 if dtype[-2] == "f" else 1)).astype(dtype)
    if np.dtype(dtype).kind == "i":
        a -= 3  # negative values through the predictor's running sum
    path = tmp_path / "s.tif"
    order = dtype[0] if dtype[0] in "<>" else None
    tifffile.imwrite(path, a, photometric="minisblack", compression=codec, byteorder=order, **kw)
    got = _read(path)
    assert np.array_equal(got, tifffile.imread(path)) and np.array_equal(got, a)
    assert got.dtype == np.dtype(dtype).newbyteorder("=")
    with tifffile.TiffFile(path) as tif:  # the plain layouts decoded once, by read_page
        page = tif.pages[1]
        built = read_page(tif.filehandle, page, "x") if codec else None
        plain = codec is not None and "tile" not in kw
        assert (built is not None) == plain
        if built is not None:
            assert np.array_equal(built[0], a[1])
    assert np.array_equal(read_whole(path), a)


def test_planes_of_one_page_and_pages_appended_one_at_a_time_read_as_written(tmp_path: Path) -> None:
    planar = tmp_path / "planar.tif"  # abTEM's defocus series: one page of 3 planes
    tifffile.imwrite(
        planar, FRAMES, photometric="rgb", planarconfig="separate", compression="zlib", rowsperstrip=20
    )
    assert np.array_equal(_read(planar), FRAMES)
    appended = tmp_path / "appended.tif"  # one series a page
    for f in FRAMES:
        tifffile.imwrite(appended, f, compression="lzma", append=True, predictor=2)
    assert np.array_equal(_read(appended), FRAMES)


def test_a_segment_holds_a_whole_strip_or_tile() -> None:
    class Page:
        samplesperpixel, planarconfig, bitspersample, is_tiled = 1, 1, 16, False
        dtype, rowsperstrip, imagelength, imagewidth = np.dtype("uint16"), 2**32 - 1, 64, 100
        tiledepth, tilelength, tilewidth = 1, 32, 48

    page = Page()
    assert segment_bytes(page) == 64 * 100 * 2  # RowsPerStrip past the image: the image
    page.rowsperstrip = 10
    assert segment_bytes(page) == 10 * 100 * 2
    page.rowsperstrip = 0  # tifffile divides by it before decoding: its error, left to it
    assert segment_bytes(page) == 0
    page.is_tiled = True
    assert segment_bytes(page) == 32 * 48 * 2
