"""Gatan Digital Micrograph ``.dm3`` / ``.dm4`` files (what a K2 / K3 counting camera saves) as a stack of
frames for offline ``denoise`` and ``evaluate-images``: which bytes are the frames, and the pixel size.

A small reader of our own, not rosettasciio's: rosettasciio is GPL-3 (sbd-stream is MIT) and brings pint
and python-box (~30 MB) for a few hundred lines of tag parsing. It parses the tag tree only: the image
data is never read here, its offset, type and dimensions are recorded and the frames read later by
explicit reads (``RawFrames``), a batch at a time.

The format (DM3: 32-bit sizes; DM4: 64-bit sizes and a size before each tag): a header (version, root
length, byte order of the data: 1 = little-endian), then the root tag group. A group is (sorted, open,
count) and its tags; a tag is (kind 20 = group / 21 = data, name); a data tag is ``%%%%``, an info list
(its type: a simple type, 18 string, 15 struct, 20 array) and its values. Images are the groups of
``ImageList``, each with ``ImageData`` {``Data``, ``DataType``, ``Dimensions`` (X, Y[, frames]),
``Calibrations/Dimension`` (``Scale``, ``Units`` per dimension)}; the first is DM's thumbnail, so the
largest image is the one read.

Bounded against a hostile header: every declared size is checked against what the file holds before a
byte is read or skipped, arrays larger than ``SMALL`` elements are never read (only located), groups
nest at most ``MAX_DEPTH`` deep and a file has at most ``MAX_TAGS`` tags. Every failure is one
``StackError`` naming the file.
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from sbd_stream.sources.stack_headers import StackError, check_declared
from sbd_stream.sources.stack_raw import RawFrames
from sbd_stream.sources.stack_units import LENGTH_UNITS_A, not_bool, square_pixel

__all__ = ["DM_SUFFIXES", "dm_image", "open_dm"]

DM_SUFFIXES = {".dm3", ".dm4"}
MAX_DEPTH = 64
MAX_TAGS = 1_000_000
SMALL = 4096
"""Arrays of at most this many elements are read (names, units, scales); longer ones only located."""
SIMPLE = {2: "h", 3: "i", 4: "H", 5: "I", 6: "f", 7: "d", 8: "?", 9: "b", 10: "B", 11: "q", 12: "Q"}
"""DM tag value types -> struct codes (2 short, 3 long, 4 ushort, 5 ulong, 6 float, 7 double, 8 bool,
9 char, 10 octet, 11 long long, 12 unsigned long long)."""
IMAGE_TYPES = {
    1: "i2", 2: "f4", 3: "c8", 6: "u1", 7: "i4", 9: "i1", 10: "u2", 11: "u4", 12: "f8", 13: "c16",
    14: "u1", 39: "i8", 40: "u8",
}  # fmt: skip
"""An image's ``DataType`` -> NumPy type (3 / 13: complex; 14: binary, one byte a pixel)."""


class _Located:
    """An array in the file: where its values start, their type and count; ``values`` only for a short
    one (at most ``SMALL``), else None (image data is never read here)."""

    def __init__(self, offset: int, code: str, count: int, values: list[Any] | None) -> None:
        self.offset, self.code, self.count, self.values = offset, code, count, values

    def text(self) -> str:
        """A short ushort array as the text DM keeps in it (units, names)."""
        return "".join(map(chr, self.values or [])) if self.code == "H" else ""


class _Parser:
    def __init__(self, fh: BinaryIO, size: int, version: int, little: bool) -> None:
        self.fh, self.size, self.version = fh, size, version
        self.data_order = "<" if little else ">"
        self.word = ">Q" if version == 4 else ">I"  # sizes and info are big-endian whatever the data
        self.tags = 0

    def read(self, n: int) -> bytes:
        if n < 0 or self.fh.tell() + n > self.size:
            raise ValueError("a tag declares more bytes than the file holds (cut short, or not a DM file)")
        return self.fh.read(n)

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def group(self, depth: int) -> dict[str, Any] | list[Any]:
        if depth > MAX_DEPTH:
            raise ValueError(f"tag groups nest deeper than {MAX_DEPTH} levels")
        self.read(2)  # sorted, open
        count = self.unpack(self.word)
        named: dict[str, Any] = {}
        unnamed: list[Any] = []
        for _ in range(count):
            self.tags += 1
            if self.tags > MAX_TAGS:
                raise ValueError(f"more than {MAX_TAGS} tags")
            kind = self.unpack("B")
            if kind == 0:  # end of file marker
                break
            name = self.read(self.unpack(">H")).decode("latin-1")
            if self.version == 4:
                self.unpack(">Q")  # the tag's size: recomputed below, never trusted
            if kind == 20:
                value = self.group(depth + 1)
            elif kind == 21:
                value = self.data()
            else:
                raise ValueError(f"unknown tag kind {kind} (not a DM file, or damaged)")
            if name:
                named[name] = value
            else:
                unnamed.append(value)
        return named if named else unnamed

    def data(self) -> Any:
        if self.read(4) != b"%%%%":
            raise ValueError("a data tag without its '%%%%' mark (not a DM file, or damaged)")
        n = self.unpack(self.word)
        if not 1 <= n <= 64:
            raise ValueError(f"a data tag declares {n} type words")
        info = [self.unpack(self.word) for _ in range(n)]
        return self.value(info)

    def value(self, info: list[int]) -> Any:
        kind = info[0]
        if kind in SIMPLE:
            return self.unpack(self.data_order + SIMPLE[kind])
        if kind == 18:  # a string of 2-byte characters
            return self.read(2 * info[1]).decode(
                "utf-16-le" if self.data_order == "<" else "utf-16-be", "replace"
            )
        if kind == 15:  # a struct: [15, name length, fields, (name length, type) per field]
            return tuple(self.unpack(self.data_order + c) for c in self._fields(info))
        if kind == 20:
            return self.array(info)
        raise ValueError(f"unknown tag value type {kind}")

    def _fields(self, info: list[int]) -> list[str]:
        nfields = info[2]
        types = info[4 : 4 + 2 * nfields : 2]
        if len(types) != nfields or any(t not in SIMPLE for t in types):
            raise ValueError("a struct tag with a field of no simple type")
        return [SIMPLE[t] for t in types]

    def array(self, info: list[int]) -> Any:
        if len(info) < 3:
            raise ValueError("an array tag without its element type and length")
        count = info[-1]
        if info[1] == 15:  # an array of structs: skipped (DM keeps no image data so)
            item = struct.calcsize("<" + "".join(self._fields(info[1:-1])))
            self.fh.seek(self.fh.tell() + self._bytes(count, item))
            return None
        code = SIMPLE.get(info[1])
        if code is None:
            raise ValueError(f"an array of unknown type {info[1]}")
        nbytes = self._bytes(count, struct.calcsize(code))
        where = self.fh.tell()
        if count > SMALL:
            self.fh.seek(where + nbytes)
            return _Located(where, code, count, None)
        return _Located(where, code, count, np.frombuffer(self.read(nbytes), self.data_order + code).tolist())

    def _bytes(self, count: int, item: int) -> int:
        nbytes = count * item
        if self.fh.tell() + nbytes > self.size:
            raise ValueError("an array declares more bytes than the file holds (cut short, or not a DM file)")
        return nbytes


def dm_image(path: Path) -> tuple[int, np.dtype, tuple[int, ...], dict[str, float]]:
    """(offset, dtype, shape (frames, H, W) or (H, W), sampling) of a DM file's largest image.

    Raises ``StackError`` (one line naming the file) for a file that is no DM3 / DM4, a damaged tag
    tree, an image type that holds no counts (RGB, complex), or dimensions the data does not hold."""
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
            if len(head) < 12:
                raise ValueError("too short for a DM header")
            version = struct.unpack(">I", head[:4])[0]
            if version not in (3, 4):
                raise ValueError(f"not a DM3 / DM4 file (version word {version})")
            order = struct.unpack(">I", head[8:12] if version == 3 else head[12:16])[0]
            fh.seek(12 if version == 3 else 16)
            root = _Parser(fh, size, version, order == 1).group(0)
    except (ValueError, struct.error, UnicodeDecodeError, RecursionError) as e:
        raise StackError(f"{path}: not a readable DM file ({e})") from None
    except OSError as e:
        raise StackError(f"{path}: cannot read ({e})") from None
    images = root.get("ImageList", []) if isinstance(root, dict) else []
    found = [
        im["ImageData"] for im in images if isinstance(im, dict) and isinstance(im.get("ImageData"), dict)
    ]
    found = [d for d in found if isinstance(d.get("Data"), _Located)]
    if not found:
        raise StackError(f"{path}: no image in its ImageList")
    data = max(found, key=lambda d: d["Data"].count)
    return _image(path, data, "<" if order == 1 else ">")


def _image(
    path: Path, data: dict[str, Any], order: str
) -> tuple[int, np.dtype, tuple[int, ...], dict[str, float]]:
    kind = data.get("DataType")
    if kind not in IMAGE_TYPES:
        what = "an RGB image" if kind in (8, 23) else f"image data type {kind}"
        raise StackError(f"{path}: {what}; a counted frame has one number per pixel")
    dt = np.dtype(order + IMAGE_TYPES[kind])
    dims = data.get("Dimensions")
    if not isinstance(dims, list) or not 2 <= len(dims) <= 3 or not all(isinstance(d, int) for d in dims):
        raise StackError(
            f"{path}: image dimensions {dims!r}: expected (width, height) or (width, height, frames)"
        )
    shape = tuple(reversed(dims))  # X varies fastest: (frames, H, W)
    raw = data["Data"]
    try:
        check_declared(shape, dt, raw.count * struct.calcsize(raw.code))
    except ValueError as e:
        raise StackError(f"{path}: {e}") from None
    return raw.offset, dt, shape, _sampling(path, data)


def _sampling(path: Path, data: dict[str, Any]) -> dict[str, float]:
    """``pixel_size_A`` from the calibrations of the image's X and Y dimensions, when their unit is a
    length; non-square pixels refused (as for TIFF and MRC); none stated: nothing (the default). A
    negative ``Scale`` is DM's mark of a flipped axis (Flip Horizontal / Vertical), its size the same:
    taken as its magnitude (it was read as no size and the frames denoised at the 0.060 A default)."""
    cal = data.get("Calibrations")
    dims = cal.get("Dimension") if isinstance(cal, dict) else None
    if not isinstance(dims, list) or len(dims) < 2 or not all(isinstance(d, dict) for d in dims[:2]):
        return {}
    sizes = []
    for d in dims[:2]:
        units = d.get("Units")
        scale = LENGTH_UNITS_A.get(units.text().strip().lower()) if isinstance(units, _Located) else None
        not_bool(d.get("Scale"), "its calibration Scale", path)
        try:
            px = abs(float(d.get("Scale"))) * scale if scale is not None else math.nan
        except (TypeError, ValueError):
            px = math.nan
        sizes.append(px)
    return square_pixel(sizes, "its calibrations", path)


class _Native:
    """Big-endian DM frames as native arrays (torch refuses a non-native byte order)."""

    def __init__(self, raw: RawFrames) -> None:
        self.raw, self.shape, self.dtype = raw, raw.shape, raw.dtype.newbyteorder("=")

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int | slice) -> np.ndarray:
        return self.raw[index].astype(self.dtype)

    def close(self) -> None:
        self.raw.close()


def open_dm(path: Path) -> tuple[Any, dict[str, float]]:
    """``(frames, sampling)`` of a DM3 / DM4 file: ``frames[i:j]`` gives arrays; ``frames.close()``."""
    offset, dt, shape, sampling = dm_image(path)
    raw = RawFrames(path, offset, shape, dt)
    return (raw if dt.isnative or dt.itemsize == 1 else _Native(raw)), sampling
