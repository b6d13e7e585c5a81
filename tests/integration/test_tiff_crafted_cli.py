"""Crafted TIFFs given to `sbd-stream denoise` and `sbd-train evaluate-images`: one error line, exit 2.

Why (session 32 fuzz survey, docs/foundation.md "Files"):
- ZSTD (compression 50000 / 34926): tifffile lists it as decodable without imagecodecs, but its fallback
  imports Python 3.14's ``compression.zstd`` only when a page is decoded; the ModuleNotFoundError was a
  traceback, exit 1, from both commands.
- An ImageWidth or RowsPerStrip of 0: tifffile divides by it (finding the series, decoding a strip),
  a ZeroDivisionError traceback from both commands; a float SampleFormat of 12 bits (no NumPy type)
  failed an assert in tifffile, an AssertionError traceback; a Predictor of 34894 (floating point by 2)
  without imagecodecs, an AttributeError traceback (tifffile calls a decoder its fallback lacks).
- To `evaluate-images` only (``denoise`` checked these): a SamplesPerPixel of 0 (an IndexError
  traceback while tifffile read the directory), a StripByteCounts of 4 GB in a 10 kB file (tifffile
  allocated it to read the strip: a MemoryError traceback).
- An NPY of 98 kB declaring (3000000, 128, 128) uint16 to `evaluate-images`: np.load allocated
  91.6 GiB first, a MemoryError traceback.
- A zlib TIFF of 0.8 MB declaring one 20000 x 20000 image (its strip of zeros inflates 1000-fold):
  ``evaluate-images`` decoded it whole, unchecked, and turned it to float64, a 3 GiB MemoryError
  traceback (or the OOM killer where memory is not limited); ``denoise`` already refused it.
"""

from __future__ import annotations

import resource
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
AS_LIMIT = 4 * 1024**3
"""Address space of the commands run: a decode far beyond the file fails here as it would on a small
machine, rather than passing on a large one."""


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))


def _run(exe: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / exe), *args], capture_output=True, text=True, timeout=300, cwd=cwd, preexec_fn=_limited
    )


def _one_error(res: subprocess.CompletedProcess, *words: str) -> None:
    assert res.returncode >= 0, f"killed by signal {-res.returncode}: {res.stderr[-400:]}"
    assert "Traceback" not in res.stderr, res.stderr[-800:]
    assert res.returncode == 2, res.stderr[-800:]
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, res.stderr[-800:]
    for w in words:
        assert w in errors[0], errors[0]


def _set_tags(path: Path, values: dict[int, int]) -> None:
    """Rewrite SHORT / LONG tag values held in the entries of every page's directory (classic TIFF)."""
    b = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        entries = [(p.tags[c].offset, int(p.tags[c].dtype), v) for p in tif.pages for c, v in values.items()]
    for at, dtype, v in entries:
        fmt = "<H" if dtype == 3 else "<I"
        b[at + 8 : at + 8 + struct.calcsize(fmt)] = struct.pack(fmt, v)
    path.write_bytes(b)


def _zstd_tiff(path: Path) -> Path:
    """A 3-frame stack whose pages say ZSTD (50000): tifffile here cannot write it without imagecodecs."""
    a = np.random.default_rng(0).poisson(3.0, (3, 64, 64)).astype(np.uint16)
    tifffile.imwrite(path, a, photometric="minisblack")
    _set_tags(path, {259: 50000})
    return path


def _forged(path: Path, dtype: str, tags: dict[int, int]) -> Path:
    """A zlib stack of 3 frames, 32 rows a strip (a Predictor tag when one is forged), with these tags of
    every page rewritten."""
    a = np.random.default_rng(0).poisson(3.0, (3, 64, 64)).astype(dtype)
    kw = {"photometric": "minisblack", "compression": "zlib", "predictor": 317 in tags, "rowsperstrip": 32}
    tifffile.imwrite(path, a, **kw)
    _set_tags(path, tags)
    return path


def _zlib_bomb(path: Path, side: int = 20000) -> Path:
    """One zlib strip of zeros declared ``side`` x ``side`` uint16: a small file, a huge image."""
    c = zlib.compressobj(9)
    row = bytes(side * 2)
    strip = b"".join(c.compress(row) for _ in range(side)) + c.flush()
    tifffile.imwrite(path, np.zeros((16, 16), np.uint16), compression="zlib")
    with tifffile.TiffFile(path) as tif:
        where = tif.pages[0].tags[273].offset  # StripOffsets: pointed at the strip appended below
    _set_tags(path, {256: side, 257: side, 278: side, 279: len(strip)})
    b = bytearray(path.read_bytes())
    b[where + 8 : where + 12] = struct.pack("<I", len(b))
    path.write_bytes(bytes(b) + strip)
    return path


def _zstd_decodable() -> bool:
    try:
        tifffile.TIFF.DECOMPRESSORS[50000](b"")
    except ImportError:
        return False
    except Exception:  # a decoder that ran (and refused empty input): imagecodecs or Python 3.14
        return True
    return True


def _evaluate(folder: Path, engine: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    return _run(
        "sbd-train", "evaluate-images", str(folder), "--pixel-size", "0.5", "--engine", str(engine),
        "--backend", "onnxruntime", "--orientations", "1", "--draws", "1", "--out-dir", str(tmp_path / "ev"),
        cwd=tmp_path,
    )  # fmt: skip


@pytest.mark.skipif(_zstd_decodable(), reason="a ZSTD decoder is installed here: nothing is missing")
def test_a_zstd_tiff_without_its_decoder_is_one_error_line(tiny_engine_dir: Path, tmp_path: Path) -> None:
    inp = _zstd_tiff(tmp_path / "z.tif")
    res = _run(
        "sbd-stream", "denoise", str(inp), str(tmp_path / "out.h5"), "--model", str(tiny_engine_dir),
        "--engine", "onnxruntime", "--orientations", "1", "--scheduler", "none", cwd=tmp_path,
    )  # fmt: skip
    _one_error(res, "z.tif", "frame 0", "decoder is missing", "imagecodecs")
    assert not (tmp_path / "out.h5").exists()
    (tmp_path / "eval").mkdir()
    _zstd_tiff(tmp_path / "eval" / "z.tif")
    _one_error(_evaluate(tmp_path / "eval", tiny_engine_dir, tmp_path), "z.tif", "decoder is missing")


def test_evaluate_images_refuses_a_tiff_declaring_a_huge_image_before_decoding(
    tiny_engine_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "eval").mkdir()
    bomb = _zlib_bomb(tmp_path / "eval" / "bomb.tif")
    assert bomb.stat().st_size < 2_000_000
    _one_error(_evaluate(tmp_path / "eval", tiny_engine_dir, tmp_path), "bomb.tif", "20000x20000")


@pytest.mark.parametrize(
    ("dtype", "tags", "word"),
    [
        ("uint16", {256: 0}, "division"),
        ("uint16", {278: 0}, "division"),
        ("float32", {258: 12}, "AssertionError"),
        ("uint16", {317: 34894}, "floatpred_decode"),
    ],
    ids=["ImageWidth-0", "RowsPerStrip-0", "float-12-bits", "predictor-34894"],
)
def test_a_tiff_with_impossible_tags_is_one_error_line(
    dtype: str, tags: dict[int, int], word: str, tiny_engine_dir: Path, tmp_path: Path
) -> None:
    inp = _forged(tmp_path / "zero.tif", dtype, tags)
    res = _run(
        "sbd-stream", "denoise", str(inp), str(tmp_path / "out.h5"), "--model", str(tiny_engine_dir),
        "--engine", "onnxruntime", "--orientations", "1", "--scheduler", "none", cwd=tmp_path,
    )  # fmt: skip
    _one_error(res, "zero.tif", word)
    assert not (tmp_path / "out.h5").exists()
    (tmp_path / "eval").mkdir()
    _forged(tmp_path / "eval" / "zero.tif", dtype, tags)
    _one_error(_evaluate(tmp_path / "eval", tiny_engine_dir, tmp_path), "zero.tif", word)


def _huge_count(path: Path) -> Path:
    """A zlib stack of one strip a page whose StripByteCounts entry says LONG 0xFFFFFF00 (4 GB)."""
    a = np.random.default_rng(0).poisson(3.0, (3, 64, 64)).astype(np.uint16)
    tifffile.imwrite(path, a, photometric="minisblack", compression="zlib", rowsperstrip=64)
    b = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        entries = [p.tags[279].offset for p in tif.pages]
    for at in entries:
        b[at + 2 : at + 4] = struct.pack("<H", 4)  # the entry's type: LONG, its one value inline
        b[at + 8 : at + 12] = struct.pack("<I", 0xFFFFFF00)
    path.write_bytes(b)
    return path


@pytest.mark.parametrize("craft", ["SamplesPerPixel-0", "StripByteCounts-4GB"])
def test_evaluate_images_of_a_tiff_with_impossible_directory_is_one_error_line(
    craft: str, tiny_engine_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "eval").mkdir()
    path = tmp_path / "eval" / "bad.tif"
    if craft == "SamplesPerPixel-0":  # three planes of one page (abTEM's defocus series), SPP 3 -> 0
        a = np.random.default_rng(0).poisson(3.0, (3, 64, 64)).astype(np.uint16)
        tifffile.imwrite(path, a, photometric="rgb", planarconfig="separate", compression="zlib")
        _set_tags(path, {277: 0})
    else:
        _huge_count(path)
    _one_error(_evaluate(tmp_path / "eval", tiny_engine_dir, tmp_path), "bad.tif")


def test_evaluate_images_of_an_npy_declaring_more_than_it_holds_is_one_error_line(
    tiny_engine_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "eval").mkdir()
    path = tmp_path / "eval" / "big.npy"
    np.save(path, np.zeros((3, 128, 128), np.uint16))
    b = path.read_bytes()
    assert b"(3, 128, 128), }    " in b  # rewritten in place, the header's length kept
    path.write_bytes(b.replace(b"(3, 128, 128), }    ", b"(3000000, 128, 128)}", 1))
    _one_error(_evaluate(tmp_path / "eval", tiny_engine_dir, tmp_path), "big.npy", "declares")
