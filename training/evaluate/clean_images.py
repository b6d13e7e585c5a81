"""Reading someone else's clean simulations for ``sbd-train evaluate-images``: which files, which arrays.

Why a rule: a folder a user points at holds what their simulator wrote and often more (notes, a failed
export, the recording of a session). One unreadable file must not cost the whole run, and a file that is
no clean simulation must not be scored as one. So:

- TIFF / MRC / NPY: the file's array, squeezed (a TIFF written a page at a time: all its pages, as
  ``sbd-stream denoise`` reads them; an MRC mode 0 flagged unsigned by IMOD: uint8); 2-D is one image,
  3-D a stack of them, (n, H, W) or, when only its last axis is shorter than 32 px, channel-last
  (H, W, n) as prismatic / MATLAB keep a defocus series. A complex array (an exit wave, not an image)
  is refused.
- EMD (``.emd``: Velox, Berkeley), Gatan ``.dm3`` / ``.dm4`` and zarr stores (a folder named ``*.zarr``,
  as abTEM's ``to_zarr`` writes one): the stack as ``sbd-stream denoise`` reads it (``open_stack``).
- HDF5 (``.h5``, ``.hdf5``, ``.nxs``, ``.hspy``): the **float** datasets that look like images (2-D, or
  3-D stacks, both image sides >= 32 px), or only the dataset named by ``dataset`` (``--dataset``).
  Integer datasets hold detector counts, not a clean simulation, and are passed over unless named.
- Files written by sbd-stream itself are **refused**: a recording (root attribute ``format`` =
  ``sbd-recording/1``, or ``raw/frames`` with ``raw/complete``: raw counts, denoised frames, likelihood
  maps) or a ``sbd-stream denoise`` output (root attribute ``engine_id``: denoised frames). Scored as
  "clean", they would compare the engine with its own output or with noise.
- A file that cannot be read, holds no image, or is refused is **skipped**: it goes on the ``skipped``
  list (path and reason) and the run goes on; only when nothing readable is left is it an error
  (:class:`NoCleanImages`).
"""

from __future__ import annotations

import logging
import math
import tokenize
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

SUFFIXES = (
    ".tif",
    ".tiff",
    ".mrc",
    ".mrcs",
    ".npy",
    ".h5",
    ".hdf5",
    ".nxs",
    ".hspy",
    ".emd",
    ".dm3",
    ".dm4",
    ".zarr",
)
HDF5_SUFFIXES = (".h5", ".hdf5", ".nxs", ".hspy")
STACK_SUFFIXES = (".emd", ".dm3", ".dm4", ".zarr")
"""Read whole as ``sbd-stream denoise`` reads them (``open_stack``): Velox / Berkeley EMD (frames last or
first, by their own layout), Gatan DM3 / DM4, and a zarr store (a **folder** named ``*.zarr``: abTEM's
``to_zarr``)."""
NPY_MAGIC = b"\x93NUMPY"
MIN_SIDE = 32
"""An HDF5 dataset with a side under this many pixels is not an image (axes, positions, metadata)."""
READ_ERRORS = (OSError, ValueError, EOFError, KeyError, TypeError)
"""What the readers raise on a damaged or foreign file (tifffile's TiffFileError is a ValueError, h5py's
"not an HDF5 file" an OSError, an empty .npy an EOFError): the file is skipped, the run goes on."""


class NoCleanImages(ValueError):
    """Nothing readable in the folder: the command ends with this one line."""


class Unusable(ValueError):
    """A file that was read but holds no clean image; the message is the whole reason."""


class NotClean(Unusable):
    """A readable file that is not a clean simulation (an sbd-stream recording or denoise output)."""


def read_images(
    folder: Path, dataset: str | None = None, skipped: list[dict[str, str]] | None = None
) -> list[tuple[str, np.ndarray]]:
    """Every clean image in the folder, sorted by file name, each named by its file's name relative to
    the folder (a stack gives one image per slice, named ``name[i]``). Files that fail are appended to
    ``skipped`` as {path, reason} and left out.

    Why the whole name: rows named by stem could not be told apart when a.tif, a.mrc and a.npy each
    scored differently. An HDF5 file with several image datasets names each by its path in the file
    (``sim.h5:defocus_0``, ``sim.h5:series/defocus_5[1]``): numbered ``sim.h5[1]`` across datasets,
    a row did not say which dataset it was, and a dataset added to the file renamed (and so redrew
    the noise of) the ones after it."""
    skipped = [] if skipped is None else skipped
    folder = Path(folder)
    files = candidates(folder)
    if not files:
        raise NoCleanImages(f"no images ({', '.join(SUFFIXES)}) in {folder}")
    out: list[tuple[str, np.ndarray]] = []
    for path in files:
        try:
            labelled = read_labelled(path, dataset)
        except READ_ERRORS as e:
            skipped.append({"path": str(path), "reason": _reason(e)})
            continue
        name = path.relative_to(folder).as_posix()
        for label, images in labelled:
            for i, img in enumerate(images):
                row = f"{name}{label}" if i == 0 else f"{name}{label}[{i}]"
                out.append((row, np.asarray(img, dtype=np.float64)))
    if not out:
        listed = _listed(skipped)
        raise NoCleanImages(f"no readable clean image in {folder} ({len(skipped)} skipped: {listed})")
    return out


def candidates(folder: Path) -> list[Path]:
    """The files of ``folder`` with a supported suffix, and its folders named ``*.zarr`` (a zarr store is
    a folder: abTEM's ``to_zarr`` writes one), sorted by name. Other folders are not looked into."""
    return sorted(
        p
        for p in Path(folder).iterdir()
        if p.suffix.lower() in SUFFIXES and (p.is_dir() if p.suffix.lower() == ".zarr" else p.is_file())
    )


def _listed(skipped: list[dict[str, str]]) -> str:
    """Every skipped file, files with the same reason named together: the one error line is the only
    record of a run that writes nothing (it cut the list at three, so a fourth file was named nowhere)."""
    by_reason: dict[str, list[str]] = {}
    for s in skipped:
        by_reason.setdefault(s["reason"], []).append(Path(s["path"]).name)
    return "; ".join(f"{', '.join(names)}: {reason}" for reason, names in by_reason.items())


@contextmanager
def quiet_tifffile() -> Iterator[None]:
    """tifffile's own log records silenced while a file is probed.

    Why: on a file that only starts like a TIFF, tifffile logs ``<tifffile.TiffPages @...> invalid offset
    to first page`` to stderr (Python's last-resort handler) before it fails; the skipped list already
    gives the reason in our words, and the stray line read as a second, unexplained error."""
    logger = logging.getLogger("tifffile")
    was = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = was


def read_file(path: Path, dataset: str | None = None) -> list[np.ndarray]:
    """The clean images of one file (module docstring for the rule); raises on anything else."""
    return [img for _, images in read_labelled(path, dataset) for img in images]


def read_labelled(path: Path, dataset: str | None = None) -> list[tuple[str, list[np.ndarray]]]:
    """``read_file``'s images grouped by array: ``(label, images)``, the label ``:DATASET`` for each of
    an HDF5 file's several image datasets, else empty (the file's name says it all)."""
    suffix = path.suffix.lower()
    labels: list[str] = []
    if suffix in HDF5_SUFFIXES:
        named = _read_hdf5(path, dataset)
        found = [arr for _, arr in named]
        labels = [f":{n}" for n, _ in named] if len(named) > 1 else []
    elif suffix in (".tif", ".tiff"):
        from sbd_stream.sources.stack_headers import StackError
        from sbd_stream.sources.stack_tiff import read_whole

        try:
            with quiet_tifffile():
                found = [read_whole(path)]
        except StackError as e:  # our own one line, less the path the skipped list names anyway
            raise Unusable(str(e).removeprefix(f"{path}: ")) from None
    elif suffix in (".mrc", ".mrcs"):  # .mrcs: RELION's name for an MRC image stack
        import mrcfile

        from sbd_stream.sources.stack_headers import imod_unsigned, mrc_pixel_size, mrc_transposed, mrc_voxel

        with mrcfile.open(path, permissive=True) as m:
            if m.data is None:
                raise Unusable("no image data in it")
            try:  # non-square pixels: scored as if square, every spacing along one axis off; an axis
                # order (mapc, mapr, maps) that puts the sections across X or Y: no images to score
                flip = mrc_transposed(m.header)
                mrc_pixel_size(mrc_voxel(m.header))
            except ValueError as e:
                raise Unusable(str(e)) from None
            data = np.array(m.data.view(np.uint8) if imod_unsigned(m.header) else m.data)
            found = [np.swapaxes(data, -1, -2) if flip else data]  # as the header (and denoise) has it
    elif suffix in STACK_SUFFIXES:  # --dataset names an EMD dataset or a zarr array; a DM file has none
        found = [_read_stack(path, None if suffix in (".dm3", ".dm4") else dataset)]
    else:
        found = [_read_npy(path)]
    grouped: list[tuple[str, list[np.ndarray]]] = []
    for k, arr in enumerate(found):
        arr = np.squeeze(arr)
        if np.iscomplexobj(arr):  # an exit wave: its real part scored as an image looked like a result
            raise Unusable(
                f"a complex array ({arr.dtype}, an exit wave?): clean images are intensities; save "
                "abs(psi)**2 after the imaging model (CTF, partial coherence)"
            )
        if arr.ndim not in (2, 3) or not np.issubdtype(arr.dtype, np.number):
            raise Unusable(f"expected a 2-D image or a stack of them, got {arr.dtype} of shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise Unusable("it holds NaN or infinite values")
        grouped.append((labels[k] if labels else "", list(as_stack(arr)) if arr.ndim == 3 else [arr]))
    return grouped


def _read_stack(path: Path, dataset: str | None = None) -> np.ndarray:
    """The whole stack of an EMD, DM or zarr input, as ``open_stack`` reads it; its refusal in its words."""
    from sbd_stream.sources.stacks import StackError, open_stack

    try:
        stack = open_stack(path, dataset, warn=False)
    except StackError as e:
        raise Unusable(str(e).removeprefix(f"{path}: ").removeprefix(f"{path}:")) from None
    try:
        return np.asarray(stack.frames[0 : stack.shape[0]])
    except StackError as e:
        raise Unusable(str(e).removeprefix(f"{path}")) from None
    finally:
        stack.close()


def _read_npy(path: Path) -> np.ndarray:
    """A NumPy ``.npy`` array, refused in our words when the file is none.

    Why: ``np.load`` falls back to unpickling a file without NumPy's header, so a foreign file was
    reported as "pickled (object) data ... load it unsafely using allow_pickle": advice to run untrusted
    code for a file that simply is not a NumPy file."""
    with open(path, "rb") as f:
        magic = f.read(len(NPY_MAGIC))
    if not magic:
        raise Unusable("an empty file")
    if magic != NPY_MAGIC:
        raise Unusable("not a NumPy .npy file (no NumPy header)")
    if (problem := _npy_size_problem(path)) is not None:
        raise Unusable(problem)
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        if "pickle" in str(e):
            raise Unusable("a NumPy array of Python objects, not of numbers") from None
        raise
    except (SyntaxError, tokenize.TokenError):  # numpy tokenizes a version 1/2 header before it parses
        # it: a header dict of "{{{{" raised tokenize.TokenError, which aborted the whole run
        raise Unusable("not a readable NumPy .npy file (its header is no readable dict)") from None


def _npy_size_problem(path: Path) -> str | None:
    """What is wrong when an NPY header declares more bytes than the file holds; None when it does not
    (or the header does not parse: ``np.load`` then says why, as before).

    Why: ``np.load`` allocates the declared array before reading it: a 98 kB file declaring
    (3000000, 128, 128) uint16 asked for 91.6 GiB, a MemoryError traceback (``denoise`` checks the same
    with ``stack_headers.npy_declared``)."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as fh:
            version = fmt.read_magic(fh)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _fortran, dt = read(fh)
            offset = fh.tell()
        declared = math.prod(int(n) for n in shape) * np.dtype(dt).itemsize
    except (ValueError, TypeError, SyntaxError, tokenize.TokenError, OverflowError):
        return None
    if np.dtype(dt).hasobject:  # a pickle: np.load refuses it in its own words below
        return None
    held = path.stat().st_size - offset
    if declared > held:
        return f"its header declares {tuple(shape)} {np.dtype(dt)} ({declared} bytes), the file holds {held}"
    return None


def negative_note(name: str, img: np.ndarray) -> str | None:
    """A warning for a clean image with negative intensities (file, fraction of pixels, minimum), else None.

    Why: intensities are never negative; a file that has them is most likely something else (contrast,
    a phase, a background-subtracted image). It is still scored, its rate clipped at 0 for the noise, and
    the paper's PSNR clamps at 0 too, so without a word the clipped image was scored as if it were right."""
    neg = np.asarray(img) < 0
    if not neg.any():
        return None
    return (
        f"{name}: {neg.mean():.2%} of its pixels are negative (minimum {float(np.min(img)):.4g}); clean "
        "images are intensities (>= 0), so this may be contrast or a phase: scored with them clipped at 0"
    )


def as_stack(arr: np.ndarray) -> np.ndarray:
    """A 3-D array as (n, H, W): stacked along its first axis, or its last when only that one is short.

    prismatic, Dr. Probe and MATLAB users keep a defocus series channel-last, (H, W, n); read along the
    first axis, a (600, 600, 3) series became 600 "images" of 600 x 3, 173 of them scored as results.
    Both layouts have both image sides >= ``MIN_SIDE``; an array where neither does is refused.
    """
    if min(arr.shape[1:]) >= MIN_SIDE:
        return arr
    if min(arr.shape[:2]) >= MIN_SIDE:
        return np.moveaxis(arr, -1, 0)
    raise Unusable(f"a 3-D array of shape {arr.shape} holds no images of >= {MIN_SIDE} px a side")


def _read_hdf5(path: Path, dataset: str | None) -> list[tuple[str, np.ndarray]]:
    import h5py
    import hdf5plugin  # noqa: F401 - bitshuffle / LZ4 filters: recordings and detector files use them

    with h5py.File(path, "r") as f:
        refused = sbd_stream_file(f)
        if refused:
            raise NotClean(f"{refused}, not a clean simulation")
        if dataset is not None:
            obj = f.get(dataset)
            if not isinstance(obj, h5py.Dataset):
                raise Unusable(f"no dataset {dataset!r} in it (--dataset)")
            return [(dataset, _whole(obj))]
        names: list[str] = []
        f.visititems(lambda name, obj: names.append(name) if _looks_clean(obj) else None)
        if not names:
            raise Unusable(
                f"no float dataset of 2-D images (sides >= {MIN_SIDE} px) in it; name one with --dataset"
            )
        return [(n, _whole(f[n])) for n in names]


def _whole(ds: Any) -> np.ndarray:
    """A dataset read whole, never through a decompressor that can crash on a damaged chunk
    (``formats/safe_chunks.py``); a refused filter or a damaged chunk is ``Unusable``, one line."""
    from sbd_stream.formats.safe_chunks import UnsafeChunks, safe_dataset

    try:
        return np.asarray(safe_dataset(ds)[()])
    except UnsafeChunks as e:
        raise Unusable(str(e)) from None


def stated_pixel_sizes(
    folder: Path, dataset: str | None = None, exclude: set[str] | frozenset[str] = frozenset()
) -> dict[str, float]:
    """The pixel size (A) each readable file of ``folder`` states (MRC ``voxel_size``, an ImageJ or abTEM
    TIFF, HDF5 ``pixel_size_A`` attributes), read as ``sbd-stream denoise`` reads it; files that state
    none, or that it cannot open, and the paths in ``exclude`` (files already skipped), are left out.

    Why: ``--pixel-size`` is the user's word for every file of the folder; a file that says otherwise
    (an abTEM TIFF at 0.05 A in a folder evaluated at 0.048 A) was scored at the wrong sampling, a 4 %
    scale error in every lattice spacing, without a word.
    """
    from sbd_stream.sources.stacks import StackError, open_stack

    out: dict[str, float] = {}
    for path in candidates(folder):
        if str(path) in exclude:
            continue
        hdf5 = path.suffix.lower() in HDF5_SUFFIXES
        try:  # --dataset names an HDF5 dataset: a TIFF / MRC / NPY beside it is opened without it
            with quiet_tifffile():
                stack = open_stack(path, (dataset or _first_clean(path)) if hdf5 else None, warn=False)
        except (StackError, *READ_ERRORS):
            continue
        try:
            px = stack.sampling.get("pixel_size_A")
        finally:
            stack.close()
        if px is not None and np.isfinite(px) and px > 0:
            out[str(path)] = float(px)
    return out


def sampling_disagreements(
    stated: dict[str, float], pixel_size_A: float, tolerance: float = 0.01
) -> list[dict[str, Any]]:
    """The files whose stated pixel size differs from ``pixel_size_A`` by more than ``tolerance``
    (relative): {path, stated_pixel_size_A, pixel_size_A}."""
    return [
        {"path": path, "stated_pixel_size_A": px, "pixel_size_A": pixel_size_A}
        for path, px in stated.items()
        if abs(px - pixel_size_A) > tolerance * pixel_size_A
    ]


def sbd_stream_file(f: Any) -> str | None:
    """What sbd-stream file this open HDF5 file is (a recording, a denoise output), else None."""
    fmt = f.attrs.get("format", "")
    fmt = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
    if fmt.startswith("sbd-recording") or ("raw/frames" in f and "raw/complete" in f):
        return f"an sbd-stream recording ({fmt or 'raw/frames'}: raw counts and denoised frames)"
    if "engine_id" in f.attrs:
        return "an `sbd-stream denoise` output (denoised frames)"
    return None


def _first_clean(path: Path) -> str | None:
    """The first dataset of an HDF5 file that ``_read_hdf5`` scores, or None (``open_stack`` then picks).

    Why: ``open_stack`` refuses a file of several image datasets as ambiguous, so such a file's stated
    ``pixel_size_A`` went unchecked against ``--pixel-size``."""
    import h5py

    names: list[str] = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: names.append(name) if _looks_clean(obj) else None)
    return names[0] if names else None


def _looks_clean(obj: Any) -> bool:
    import h5py

    return (
        isinstance(obj, h5py.Dataset)
        and obj.dtype.kind == "f"
        and obj.ndim in (2, 3)
        and (min(obj.shape[-2:]) >= MIN_SIDE or min(obj.shape[:2]) >= MIN_SIDE)  # (n,H,W) or (H,W,n)
    )


def _reason(e: Exception) -> str:
    """One line: our own reason as it is; a reader's first line of message after its error's name."""
    msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)  # a KeyError's str is a repr
    first = msg.strip().splitlines()[0] if msg.strip() else ""
    if isinstance(e, Unusable):
        return first
    return f"{type(e).__name__}: {first}" if first else type(e).__name__
