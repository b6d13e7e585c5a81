"""Gatan DM3 / DM4 files read by ``open_stack`` (``stack_dm.py``): frames in order, the pixel size from the
calibrations, and a hostile or damaged header as one ``StackError`` line.

Neither rosettasciio nor HyperSpy writes DM files, so the files here are written by ``write_dm`` below,
following the format as rosettasciio reads it (header, tag groups, ``%%%%`` data tags, ``ImageList`` with a
thumbnail first), and each one is cross-checked against rosettasciio's reader: a file both readers agree
on is a DM file as Digital Micrograph's readers see it.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from ci_require import require_module

from sbd_stream.sources.stacks import StackError, open_stack

TYPES = {"int16": (1, 2), "float32": (2, 6), "uint8": (6, 10), "int32": (7, 3), "uint16": (10, 4)}
"""NumPy type -> (DM image DataType, tag element type of its Data array)."""


def _tag_data(version: int, info: list[int], payload: bytes) -> bytes:
    word = ">Q" if version == 4 else ">I"
    return b"%%%%" + struct.pack(word, len(info)) + b"".join(struct.pack(word, i) for i in info) + payload


def _tag(version: int, name: str, body: bytes, group: bool) -> bytes:
    raw = name.encode("latin-1")
    head = struct.pack(">BH", 20 if group else 21, len(raw)) + raw
    return head + (struct.pack(">Q", len(body)) if version == 4 else b"") + body


def _group(version: int, tags: list[bytes]) -> bytes:
    return b"\x00\x01" + struct.pack(">Q" if version == 4 else ">I", len(tags)) + b"".join(tags)


def _long(version: int, name: str, v: int) -> bytes:
    return _tag(version, name, _tag_data(version, [3], struct.pack("<i", v)), False)


def _float(version: int, name: str, v: float) -> bytes:
    return _tag(version, name, _tag_data(version, [6], struct.pack("<f", v)), False)


def _text(version: int, name: str, s: str) -> bytes:
    data = np.array([ord(c) for c in s], "<u2").tobytes()
    return _tag(version, name, _tag_data(version, [20, 4, len(s)], data), False)


def _image(version: int, arr: np.ndarray, scale: float, units: str) -> bytes:
    dtype_code, elem = TYPES[arr.dtype.name]
    dims = list(reversed(arr.shape))  # X first
    cal = [
        _group(
            version,
            [
                _float(version, "Origin", 0.0),
                _float(version, "Scale", scale if k < 2 else 1.0),
                _text(version, "Units", units if k < 2 else ""),
            ],
        )
        for k in range(len(dims))
    ]
    data = _tag_data(version, [20, elem, arr.size], arr.astype(arr.dtype.newbyteorder("<")).tobytes())
    image_data = _group(
        version,
        [
            _tag(
                version,
                "Calibrations",
                _group(
                    version,
                    [
                        _tag(
                            version,
                            "Dimension",
                            _group(version, [_tag(version, "", c, True) for c in cal]),
                            True,
                        )
                    ],
                ),
                True,
            ),
            _tag(version, "Data", data, False),
            _long(version, "DataType", dtype_code),
            _tag(version, "Dimensions", _group(version, [_long(version, "", d) for d in dims]), True),
            _long(version, "PixelDepth", arr.dtype.itemsize),
        ],
    )
    return _group(
        version,
        [
            _tag(version, "ImageData", image_data, True),
            _tag(version, "ImageTags", _group(version, []), True),
            _text(version, "Name", "frames"),
        ],
    )


def write_dm(path: Path, arr: np.ndarray, scale: float = 0.05, units: str = "nm", version: int = 4) -> Path:
    """A DM3 / DM4 file of ``arr`` ((H, W) or (frames, H, W)) after a 4 x 4 thumbnail, as DM saves."""
    thumb = _image(version, np.zeros((4, 4), np.uint8), 1.0, "")
    root = _group(
        version,
        [
            _tag(
                version,
                "ImageList",
                _group(
                    version,
                    [
                        _tag(version, "", thumb, True),
                        _tag(version, "", _image(version, arr, scale, units), True),
                    ],
                ),
                True,
            )
        ],
    )
    word = ">Q" if version == 4 else ">I"
    path.write_bytes(
        struct.pack(">I", version)
        + struct.pack(word, len(root))
        + struct.pack(">I", 1)
        + root
        + b"\x00" * (8 if version == 4 else 4)
    )
    return path


def _rsciio(path: Path) -> tuple[np.ndarray, list[dict]]:
    from rsciio.digitalmicrograph import file_reader

    d = next(x for x in file_reader(str(path)) if x["data"].size > 16)
    return np.asarray(d["data"]), d["axes"]


@pytest.mark.parametrize("version", [3, 4])
@pytest.mark.parametrize("dtype", ["uint16", "float32", "int32"])
def test_dm_stack_frames_and_pixel_size_agree_with_rosettasciio(
    tmp_path: Path, version: int, dtype: str
) -> None:
    require_module("rsciio", "rosettasciio is in the dev extra")
    arr = (np.arange(3 * 40 * 48) % 997).reshape(3, 40, 48).astype(dtype)
    path = write_dm(tmp_path / f"movie.dm{version}", arr, scale=0.0062, units="nm", version=version)
    theirs, axes = _rsciio(path)
    np.testing.assert_array_equal(theirs, arr)  # the writer is DM as rosettasciio reads it
    assert [a["units"] for a in axes[-2:]] == ["nm", "nm"] and axes[-1]["scale"] == pytest.approx(0.0062)
    stack = open_stack(path)
    try:
        assert stack.shape == (3, 40, 48)
        np.testing.assert_array_equal(np.concatenate(list(stack.batches(2))), arr)  # frames in order
        assert stack.sampling == {"pixel_size_A": pytest.approx(0.062)}
    finally:
        stack.close()


def test_dm_single_image_in_micrometres_and_angstrom_units(tmp_path: Path) -> None:
    arr = np.arange(64 * 80, dtype=np.uint16).reshape(64, 80)
    stack = open_stack(write_dm(tmp_path / "one.dm4", arr, scale=1.5e-4, units="\u00b5m"))
    assert stack.shape == (1, 64, 80) and stack.sampling["pixel_size_A"] == pytest.approx(1.5)
    np.testing.assert_array_equal(stack.frames[0:1][0], arr)
    stack.close()
    stack = open_stack(write_dm(tmp_path / "a.dm3", arr, scale=0.7, units="\u00c5", version=3))
    assert stack.sampling["pixel_size_A"] == pytest.approx(0.7)
    stack.close()


def test_dm_without_a_length_unit_states_no_pixel_size(tmp_path: Path) -> None:
    """An uncalibrated image (DM's "pixel" unit, scale 1) or a diffraction pattern (1/nm): no pixel size
    (the documented default applies), never its scale taken as angstrom."""
    arr = np.ones((2, 32, 32), np.uint16)
    for units in ("", "1/nm"):
        stack = open_stack(write_dm(tmp_path / f"u{len(units)}.dm4", arr, scale=1.0, units=units))
        assert stack.sampling == {}
        stack.close()


def test_dm_hostile_and_damaged_headers_are_one_stack_error(tmp_path: Path) -> None:
    good = write_dm(tmp_path / "good.dm4", np.ones((2, 32, 32), np.uint16)).read_bytes()
    i = good.rindex(b"\x00\x04Data")  # the frames' Data tag (after the thumbnail's)
    cases = {
        "cut.dm4": good[: len(good) // 2],
        "empty.dm4": b"",
        "text.dm3": b"hello, not a DM file at all\n" * 4,
        # the root declares 2^62 tags (without DM's end-of-file mark, which ends a group early)
        "huge_count.dm4": good[:16] + b"\x00\x01" + struct.pack(">Q", 2**62) + good[26:-8],
    }
    at = good.index(b"%%%%", i) + 4 + 8 + 8 + 8  # %%%%, ninfo, 20, element type: then the length word
    cases["huge_array.dm4"] = good[:at] + struct.pack(">Q", 2**40) + good[at + 8 :]

    cases["huge_dims.dm4"] = good.replace(struct.pack("<i", 32), struct.pack("<i", 2**30))
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(StackError) as e:
            open_stack(path).close()
        why = "each side must be" if name == "huge_dims.dm4" else "not a readable DM file"
        assert str(e.value).startswith(f"{path}: ") and why in str(e.value), (name, str(e.value))
        assert "\n" not in str(e.value)


def test_dm_nonsquare_pixels_refused(tmp_path: Path) -> None:
    arr = np.ones((32, 32), np.uint16)
    path = write_dm(tmp_path / "ns.dm4", arr)
    content = path.read_bytes()
    k = content.rindex(struct.pack("<f", 0.05))  # the Y calibration's scale (X is written first)
    path.write_bytes(content[:k] + struct.pack("<f", 0.1) + content[k + 4 :])
    with pytest.raises(StackError, match="non-square pixels"):
        open_stack(path)


@pytest.mark.parametrize("scales", [(-0.013, -0.013), (0.013, -0.013), (-0.013, 0.013)])
def test_dm_negative_scale_is_a_flipped_axis_of_that_size(
    tmp_path: Path, scales: tuple[float, float]
) -> None:
    """DM writes a negative ``Scale`` for an axis flipped in Digital Micrograph: the pixel is as large
    (0.13 A here), never "no pixel size stated" and the 0.060 A default with its warning."""
    good = write_dm(
        tmp_path / "flip.dm4", np.ones((2, 32, 40), np.uint16), scale=0.013, units="nm"
    ).read_bytes()
    one = struct.pack("<f", 0.013)
    assert good.count(one) == 2  # the image's X and Y Scale (the thumbnail's and the frames' are 1.0)
    first = good.index(one)
    second = good.index(one, first + 4)
    raw = bytearray(good)
    raw[first : first + 4], raw[second : second + 4] = (struct.pack("<f", s) for s in scales)
    (tmp_path / "flip2.dm4").write_bytes(bytes(raw))
    stack = open_stack(tmp_path / "flip2.dm4")
    try:
        assert stack.sampling == {"pixel_size_A": pytest.approx(0.13)}
    finally:
        stack.close()
