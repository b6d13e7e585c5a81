"""EMD files (``.emd``, HDF5) as a stack of frames: Thermo Fisher Velox's and Berkeley EMD's layouts.

- Velox: each image signal at ``/Data/Image/<uuid>/Data``, shaped (H, W, frames): frames **last**, so a
  frame is ``Data[:, :, i]``; its pixel size in ``/Data/Image/<uuid>/Metadata``, JSON kept as bytes
  (a column per frame): ``BinaryResult.PixelSize.width`` / ``height`` in ``PixelUnitX`` / ``PixelUnitY``
  (metres). Read as HDF5 by name, its 3-frame stack was a 3-pixel-wide stack of H frames.
- Berkeley EMD: a group with the attribute ``emd_group_type = 1`` holding ``data`` and one vector per
  axis, ``dim1``, ``dim2``[, ``dim3``] (attributes ``name``, ``units``): the two axes in a length unit
  are the image's, the other the frames'; the pixel size is the vectors' spacing. HyperSpy /
  rosettasciio write the array transposed, (W, H, frames), with two-element axis vectors, and read it
  back as ``data.T``: such a file (frames on ``dim3``, or no length units at all) is read as they read
  it, so its frames are theirs. A file whose vectors are as long as their axes (the specification's,
  ncempy's) is in C order: (H, W), (H, W, frames) or, frames on ``dim1``, (frames, H, W).

Either way the frames come out (frames, H, W), read a batch at a time (``FramesLast``); a unit that is no
length states no pixel size (the documented default applies), never its number taken as angstrom.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from sbd_stream.formats.limits import external_problem, unstored_problem
from sbd_stream.formats.safe_chunks import UnsafeChunks, read_safely, safe_dataset
from sbd_stream.sources.stack_headers import StackError
from sbd_stream.sources.stack_units import LENGTH_UNITS_A, not_bool, square_pixel

__all__ = ["EMD_UNITS_A", "FramesLast", "emd_frames"]

EMD_UNITS_A = {**LENGTH_UNITS_A, "m": 1e10, "mm": 1e7, "meter": 1e10, "metre": 1e10}
"""A length unit of an EMD axis -> angstrom per unit (Velox keeps metres, Berkeley EMD ``[n_m]``)."""
MAX_METADATA = 16 * 1024 * 1024
"""Most bytes of one Velox metadata column read (a hostile file declares any size)."""


class FramesLast:
    """An (H, W, n) dataset seen as (n, H, W): each ``[i:j]`` reads those frames, their axis moved first.
    ``transposed``: a Berkeley EMD array kept in Fortran order, (W, H, n), seen as (n, H, W) as
    HyperSpy / rosettasciio read it (``data.T``); a 2-D one, (W, H), as one frame."""

    def __init__(self, ds: Any, transposed: bool = False) -> None:
        self.ds, self.transposed = ds, transposed
        shape = tuple(ds.shape) if ds.ndim == 3 else (*ds.shape, 1)
        self.shape = (shape[2], shape[1], shape[0]) if transposed else (shape[2], shape[0], shape[1])
        self.dtype = ds.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int | slice) -> np.ndarray:
        if not isinstance(index, slice):
            return self[index : index + 1][0] if index != -1 else self[index:][0]
        block = self.ds[:, :, index] if self.ds.ndim == 3 else self.ds[()][:, :, None][:, :, index]
        return np.transpose(block, (2, 1, 0) if self.transposed else (2, 0, 1))

    @property
    def external(self) -> Any:  # limits.external_problem looks at the dataset itself
        return getattr(self.ds, "external", None)


def emd_frames(f: h5py.File, path: Path, dataset: str | None) -> tuple[str, Any, dict[str, float]] | None:
    """(dataset name, frames (n, H, W), sampling) of a Velox or Berkeley EMD file, or None when ``f`` is
    neither (an HDF5 file merely named .emd: read as any HDF5 file). ``dataset`` picks one of several."""
    velox = _velox_names(f)
    if velox:
        name = _pick(velox, dataset, path)
        ds = f[name]
        if ds.ndim != 3:
            raise StackError(
                f"{path}:{name}: a Velox image of shape {ds.shape}; expected (height, width, frames)"
            )
        _check_stored(ds, f"{path}:{name}")
        return name, FramesLast(safe_dataset(ds)), _velox_sampling(f[name].parent, path)
    berkeley = _berkeley_groups(f)
    if berkeley:
        group = _pick([f"{g}/data" for g in berkeley], dataset, path).removesuffix("/data")
        return _berkeley(f[group], path)
    return None


def _pick(names: list[str], dataset: str | None, path: Path) -> str:
    if dataset is not None:
        name = dataset.strip("/")
        if name not in names:
            raise StackError(f"{path}: no image '{dataset}' (images: {', '.join(names)})")
        return name
    if len(names) > 1:
        raise StackError(f"{path}: {len(names)} images ({', '.join(names)}); name one with --dataset")
    return names[0]


def _velox_names(f: h5py.File) -> list[str]:
    images = f.get("Data/Image")
    if not isinstance(images, h5py.Group):
        return []
    return sorted(f"Data/Image/{k}/Data" for k, g in images.items()
                  if isinstance(g, h5py.Group) and isinstance(g.get("Data"), h5py.Dataset))  # fmt: skip


def _velox_sampling(group: h5py.Group, path: Path) -> dict[str, float]:
    meta = group.get("Metadata")
    if not isinstance(meta, h5py.Dataset) or meta.ndim not in (1, 2) or meta.dtype.kind not in "uiS":
        return {}
    if meta.shape[0] > MAX_METADATA:
        raise StackError(f"{path}: its Velox metadata declares {meta.shape[0]} bytes a frame; damaged?")
    column = _small(meta, (slice(None), 0) if meta.ndim == 2 else (), path)
    try:
        text = np.asarray(column).astype(np.uint8).tobytes().rstrip(b"\x00").decode("utf-8")
        result = json.loads(text).get("BinaryResult", {})
        size = result["PixelSize"]
        units = (result.get("PixelUnitX", "m"), result.get("PixelUnitY", "m"))
        sizes = [
            _length(not_bool(size[k], f"its Velox PixelSize {k}", path), u)
            for k, u in zip(("width", "height"), units, strict=True)
        ]
    except StackError:  # a boolean for a size (session 35): refused, not the default
        raise
    except (ValueError, KeyError, TypeError, AttributeError, OSError, RecursionError):
        return {}  # no readable pixel size (JSON nested 10^5 deep too): the documented default
    return _square(sizes, path)


def _length(value: Any, units: Any) -> float:
    scale = EMD_UNITS_A.get(str(units).strip().strip("[]").replace("_", "").lower())
    return float(value) * scale if scale is not None else math.nan


def _square(sizes: list[float], path: Path) -> dict[str, float]:
    return square_pixel(sizes, "its pixel size", path)


def _berkeley_groups(f: h5py.File) -> list[str]:
    found: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Group) and _attr(obj, "emd_group_type") == "1" and "data" in obj:
            found.append(name)

    f.visititems(visit)
    return sorted(found)


def _attr(obj: Any, key: str) -> str:
    v = obj.attrs.get(key, "")
    v = v.decode("utf-8", "replace") if isinstance(v, bytes) else v
    return str(v.item() if isinstance(v, np.ndarray) and v.size == 1 else v)


def _berkeley(group: h5py.Group, path: Path) -> tuple[str, Any, dict[str, float]]:
    ds = group["data"]
    name = f"{group.name.strip('/')}/data"
    if not isinstance(ds, h5py.Dataset) or ds.ndim not in (2, 3):
        raise StackError(
            f"{path}:{name}: expected a 2-D image or a 3-D stack, got shape {getattr(ds, 'shape', None)}"
        )
    _check_stored(ds, f"{path}:{name}")
    spacing = []
    for k in range(ds.ndim):
        dim = group.get(f"dim{k + 1}")
        spacing.append(_spacing(dim, path) if isinstance(dim, h5py.Dataset) else math.nan)
    lengths = [k for k, s in enumerate(spacing) if not math.isnan(s)]
    if _spec_vectors(group, ds.shape) and lengths in ([0, 1], []):  # C order, (H, W[, frames]) as ncempy
        return name, FramesLast(safe_dataset(ds)), _square(spacing[:2], path) if lengths else {}
    if ds.ndim == 2 or lengths in ([0, 1], []):  # HyperSpy's layout, (W, H[, frames]): read as it reads it
        frames = FramesLast(safe_dataset(ds), transposed=True)
        return name, frames, _square(spacing[:2], path) if lengths else {}
    if lengths != [1, 2]:
        raise StackError(
            f"{path}:{name}: the axes in a length unit are dim{', dim'.join(str(k + 1) for k in lengths)}; "
            "expected two of dim1 to dim3 and the other the frames"
        )
    return name, safe_dataset(ds), _square(spacing[1:], path)  # (frames, H, W) in C order (ncempy's layout)


def _spec_vectors(group: h5py.Group, shape: tuple[int, ...]) -> bool:
    """True when every ``dimK`` is a full axis vector, ``len(dimK) == shape[K-1]``, as the EMD
    specification and ncempy write them: the array is then in C order, dim1 its first axis. HyperSpy /
    rosettasciio write two-element vectors (offset and offset + scale) for a transposed array; a file
    whose axes are all two long cannot tell the two apart and is read as HyperSpy reads it. Why: a 2-D
    ncempy file, (H, W), came out transposed, a non-square image with its sides swapped (audit h32)."""
    dims = [group.get(f"dim{k + 1}") for k in range(len(shape))]
    if not all(isinstance(d, h5py.Dataset) and d.ndim == 1 for d in dims) or all(n == 2 for n in shape):
        return False
    return all(d.shape[0] == n for d, n in zip(dims, shape, strict=True))


def _spacing(dim: h5py.Dataset, path: Path) -> float:
    """The spacing of an axis vector in angstrom; NaN when its unit is no length or it has one value."""
    scale = EMD_UNITS_A.get(_attr(dim, "units").strip().strip("[]").replace("_", "").lower())
    if scale is None or dim.ndim != 1 or dim.shape[0] < 2 or dim.dtype.kind not in "iuf":
        return math.nan
    first, second = (float(v) for v in _small(dim, slice(0, 2), path))
    return abs(second - first) * scale


def _check_stored(ds: h5py.Dataset, where: str) -> None:
    """StackError when the file stores fewer pixels than ``ds`` declares (``limits.unstored_problem``,
    strict: Velox, ncempy and HyperSpy write every frame). Why (session 33): a 10 kB Velox file declaring
    (64, 64, 10^8) with no chunk written made ``denoise`` denoise 10^8 blank frames (days)."""
    if (problem := unstored_problem(ds, where, 1, strict=True)) is not None:  # strict: frames unused
        raise StackError(problem)


def _small(ds: h5py.Dataset, index: Any, path: Path) -> np.ndarray:
    """``ds[index]`` of a metadata dataset through ``formats/safe_chunks.py``, its failure a StackError:
    a Velox ``Metadata`` or a ``dimN`` vector stored with a crafted bitshuffle-LZ4 chunk killed
    ``denoise FILE.emd`` (SIGSEGV) in the filter, and a damaged one gave the default pixel size silently.
    One kept in HDF5 external storage is refused, as frames are: it read ``/etc/passwd`` or ``/dev/zero``."""
    if (problem := external_problem(ds, f"{path}:{ds.name}")) is not None:
        raise StackError(problem)
    try:
        return np.asarray(read_safely(ds, index, f"{path}:{ds.name}"))
    except OSError as e:
        said = str(e) if isinstance(e, UnsafeChunks) else f"{path}:{ds.name}: {e}; damaged?"
        raise StackError(said) from None
