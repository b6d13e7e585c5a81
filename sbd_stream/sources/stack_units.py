"""The pixel size a TIFF states, and whether a stated pixel size (TIFF or MRC) can be a TEM pixel.

Read, in this order (the first that states a length wins):

- ImageJ's description (``unit`` + XResolution, pixels per unit) or a plain TIFF's JSON description
  (``pixel_size`` + ``unit``, as ``sbd-stream export`` writes it);
- OME-XML: the first ``Pixels``' ``PhysicalSizeX`` / ``PhysicalSizeY`` in ``PhysicalSizeXUnit`` (OME's
  default: micrometre). Why: an OME-TIFF at 0.5 A (Fiji / Bio-Formats, tifffile ``ome=True``) was read
  as stating nothing and denoised at the paper's 0.060 A;
- abTEM's ``Images.to_tiff`` JSON (two ``RealSpaceAxis`` samplings);
- the baseline resolution tags with ResolutionUnit CENTIMETER or INCH (pixels per unit), as microscope
  software's TIFF exports and converters write a calibration in pixels per cm at the specimen. Why: such
  a TIFF at 0.5 A was denoised at 0.060 A without a word.

Whatever states it, a pixel size outside ``limits.PIXEL_SIZE_A_RANGE`` (0.001 to 1000 A) is no TEM
pixel at the specimen and is not taken, with one warning: a print resolution (72, 96, 300 dpi: 0.08 to
0.35 mm a pixel) is in nearly every TIFF a graphics program or PIL saves, and an ImageJ calibration of
1 pixel per micron is a light-microscope one. Taken, such a value reached the engine's settings and
``denoise`` ended on a four-line validation error, or (had it passed) planned a binning by 10^5.
"""

from __future__ import annotations

import json
import logging
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from sbd_stream.formats.limits import PIXEL_SIZE_A_RANGE, bool_text, is_bool
from sbd_stream.sources.stack_headers import StackError

__all__ = ["LENGTH_UNITS_A", "abtem_sampling", "ome_sampling", "plausible_pixel", "tiff_sampling"]

log = logging.getLogger(__name__)

LENGTH_UNITS_A = {
    "angstrom": 1.0, "a": 1.0, "\u00c5": 1.0, "\u00e5": 1.0, "\\u00c5": 1.0, "\u212b": 1.0,
    "nm": 10.0, "nanometer": 10.0, "nanometre": 10.0, "pm": 0.01, "picometer": 0.01,
    "um": 1e4, "\u00b5m": 1e4, "micron": 1e4, "microns": 1e4, "micrometer": 1e4, "micrometre": 1e4,
    "\\u00b5m": 1e4, "\u03bcm": 1e4, "\\u03bcm": 1e4,  # ImageJ's escaped micro sign; the Greek mu
}  # fmt: skip
"""A pixel size's unit (ImageJ, JSON description, abTEM, OME ``UnitsLength``) -> angstrom per unit."""
LARGE_UNITS_A = {
    **LENGTH_UNITS_A, "mm": 1e7, "cm": 1e8, "dm": 1e9, "m": 1e10, "in": 2.54e8, "inch": 2.54e8,
}  # fmt: skip
"""With the units no TEM pixel is stated in, for ImageJ and OME calibrations: read so that a size in
them is judged (``plausible_pixel``: ImageJ calibrates a 72 dpi TIFF as 72 pixels per inch), not
silently unread. Kept apart from ``LENGTH_UNITS_A``, which other readers use unjudged."""
RESOLUTION_UNITS_A = {2: ("inch", 2.54e8), 3: ("cm", 1e8)}
"""TIFF ResolutionUnit (tag 296) -> (name, angstrom per unit); 1 (NONE) states no length."""
_warned: set[str] = set()


def not_bool(value: Any, field: str, where: Path | str) -> Any:
    """``value``, refused (``StackError``, one line naming ``field``) when it is true / false where a
    pixel size is stated: ``float(True)`` is 1.0, so a ``"sampling": true`` read as a 1 A pixel (session
    35). Other non-numbers keep their reader's rule (most: no size stated, the documented default)."""
    if is_bool(value):
        raise StackError(f"{where}: {field} is {bool_text(value)}, a boolean, not a number: correct it")
    return value


def tiff_sampling(tif: Any, path: Path | str = "") -> dict[str, float]:
    """``pixel_size_A`` a TIFF states (module docstring: which metadata, in which order), when it is a
    plausible TEM pixel; else nothing. Unequal X and Y sizes (non-square pixels) are refused: the engine
    works on square pixels, and the X size alone binned them as if square."""
    meta = dict(tif.imagej_metadata or {})
    if not meta and tif.shaped_metadata:
        meta = dict(tif.shaped_metadata[0] or {})
    tags = tif.pages[0].tags
    scale = LARGE_UNITS_A.get(str(meta.get("unit", "")).strip().lower())
    if scale is not None:
        size = meta.get("pixel_size")
        if size is None:
            size = _per_pixel(tags.get("XResolution"))
            _square(size, _per_pixel(tags.get("YResolution")), scale, "its resolution tags", path)
        not_bool(size, "its pixel_size calibration", path)
        try:
            px = float(size) * scale if size is not None else 0.0
        except (TypeError, ValueError):
            return {}
        return plausible_pixel(px, f"its {meta.get('unit')} calibration", path)
    if tif.is_ome and (stated := ome_sampling(tif.ome_metadata or "", path)):
        return stated
    if stated := abtem_sampling(tif.pages[0].description, path):
        return plausible_pixel(stated["pixel_size_A"], "its abTEM description", path)
    return _resolution_sampling(tags, path)


def _resolution_sampling(tags: Any, path: Path | str) -> dict[str, float]:
    """The baseline resolution tags in centimetres or inches, as a pixel size (module docstring)."""
    unit = tags.get("ResolutionUnit")
    try:
        name, scale = RESOLUTION_UNITS_A[int(unit.value)] if unit is not None else ("", 0.0)
    except (KeyError, TypeError, ValueError):
        return {}
    x, y = _per_pixel(tags.get("XResolution")), _per_pixel(tags.get("YResolution"))
    if not scale or x is None:
        return {}
    where = f"its resolution tags ({1 / x:.4g} pixels per {name})"
    if not _in_range(x * scale):  # a print resolution: judged before squareness (fax: 204 x 196 dpi)
        return plausible_pixel(x * scale, where, path)
    _square(x, y, scale, "its resolution tags", path)
    return plausible_pixel(x * scale, where, path)


def ome_sampling(xml: str, path: Path | str = "") -> dict[str, float]:
    """``pixel_size_A`` from an OME-XML description: the first ``Pixels`` element's ``PhysicalSizeX`` /
    ``PhysicalSizeY`` in their units (micrometre when unstated, as OME defines it); non-square refused."""
    try:
        root = ET.fromstring(xml)
    except (ET.ParseError, ValueError):
        return {}
    pixels = next((e for e in root.iter() if str(e.tag).rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None or pixels.get("PhysicalSizeX") is None:
        return {}
    sizes = []
    for axis in ("X", "Y"):
        value, unit = pixels.get(f"PhysicalSize{axis}"), pixels.get(f"PhysicalSize{axis}Unit", "\u00b5m")
        scale = LARGE_UNITS_A.get(unit.strip().lower())
        try:
            sizes.append(float(value) * scale if value is not None and scale is not None else None)
        except ValueError:
            return {}
    x, y = sizes
    if x is None or not math.isfinite(x) or x <= 0:
        return {}
    _square(x, y, 1.0, "its OME PhysicalSizeX / PhysicalSizeY", path)
    return plausible_pixel(x, "its OME PhysicalSizeX", path)


def _square(x: float | None, y: float | None, scale: float, where: str, path: Path | str) -> None:
    """StackError when both sizes are stated, finite and differ by more than 0.1 %."""
    if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):
        return
    if abs(x - y) > 1e-3 * abs(x):
        raise StackError(
            f"{path}: non-square pixels ({x * scale:.4g} A wide, {y * scale:.4g} A high, from {where}); "
            "the engine works on square pixels: resample the frames to square ones"
        )


def square_pixel(sizes: list[float], where: str, path: Path | str) -> dict[str, float]:
    """``pixel_size_A`` from a stated (width, height) in A: nothing unless both are finite and > 0;
    StackError for non-square pixels; else ``plausible_pixel``. The DM, EMD and zarr readers' rule."""
    if len(sizes) != 2 or not all(math.isfinite(v) and v > 0 for v in sizes):
        return {}
    _square(sizes[0], sizes[1], 1.0, where, path)
    return plausible_pixel(sizes[0], where, path)


def _in_range(px: float) -> bool:
    return math.isfinite(px) and PIXEL_SIZE_A_RANGE[0] <= px <= PIXEL_SIZE_A_RANGE[1]


def plausible_pixel(px: float, where: str, path: Path | str) -> dict[str, float]:
    """``{"pixel_size_A": px}`` when ``px`` can be a TEM pixel at the specimen; nothing for an unset one
    (0, negative, NaN); one warning and nothing for a size outside ``PIXEL_SIZE_A_RANGE`` (module
    docstring), once per file and value in this process."""
    if not (math.isfinite(px) and px > 0):
        return {}
    if _in_range(px):
        return {"pixel_size_A": px}
    lo, hi = PIXEL_SIZE_A_RANGE
    note = (
        f"{path}: {where}: {px:.4g} A a pixel is no TEM pixel at the specimen ({lo:g} to {hi:g} A; a print "
        "resolution?): not taken; give --pixel-size"
    )
    key = f"{Path(path).resolve()} {px!r}"  # a file reopened by its absolute path is the same file
    if key not in _warned:
        _warned.add(key)
        log.warning("%s", note)
    return {}


def _per_pixel(tag: Any) -> float | None:
    """Units per pixel from a resolution tag (pixels per unit, a rational), None when absent or 0."""
    if tag is None:
        return None
    try:
        num, den = tag.value
        return den / num if num else None
    except (TypeError, ValueError, ZeroDivisionError):
        return None


def abtem_sampling(description: str, path: Path | str = "") -> dict[str, float]:
    """``pixel_size_A`` from abTEM's ``Images.to_tiff`` description: JSON whose ``axes`` hold two
    ``RealSpaceAxis`` entries with ``sampling`` and ``units``; equal samplings only (a square pixel).

    An abTEM user's TIFF at 0.05 A was denoised at the paper's 0.060 A because this went unread.
    """
    try:
        axes = json.loads(description).get("axes", {}) if description.lstrip().startswith("{") else {}
    except (ValueError, AttributeError):
        return {}
    sizes = []
    for ax in axes.values() if isinstance(axes, dict) else ():
        if isinstance(ax, dict) and ax.get("type") == "RealSpaceAxis" and "sampling" in ax:
            scale = LENGTH_UNITS_A.get(str(ax.get("units", "")).strip().lower())
            not_bool(ax["sampling"], "its abTEM description's sampling", path)
            try:
                sizes.append(float(ax["sampling"]) * scale if scale else float("nan"))
            except (TypeError, ValueError):
                return {}
    if len(sizes) != 2 or not all(math.isfinite(s) for s in sizes) or min(sizes) <= 0:
        return {}
    if abs(sizes[0] - sizes[1]) > 1e-3 * sizes[0]:
        return {}
    return {"pixel_size_A": sizes[0]}
