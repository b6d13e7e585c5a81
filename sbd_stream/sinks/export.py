"""`sbd-stream export`: a recording's frames as TIFF, MRC or NPY, with the pixel size where each keeps it.

(Its detected-column table, ``--kind columns --to csv``: sinks/export_columns.py.)

For tools that read neither NeXus nor HDF5. The frames of one kind (raw, denoised, llr) across the
rolled parts of an acquisition, **in frame order** (``seq`` within each segment: a new series or a
producer restart starts a segment), streamed (never all in memory). Frame order, not row order: the
complete lane writes a frame the live lane skipped when the engine is free, so a recording's
``denoised`` rows are not in time order, and a movie written row by row would jump back. Also takes
the output of ``sbd-stream denoise`` / ``replay --offline`` (a ``denoised`` dataset,
with ``seq`` / ``ts`` beside it where the input was a recording). Calibration, from the file's
``pixel_size_A`` checked as ``denoise`` checks it (``limits.sampling_attrs``; none stated: unit ``pixel``):

* TIFF: ImageJ hyperstack (``axes`` TYX) whose X/Y resolution tags are pixels per ``unit`` =
  ``angstrom`` and ``finterval`` the median interval between consecutive frames' times (s; gaps and
  dropped frames do not stretch it); dtypes ImageJ cannot hold (uint32, ...) are written as a plain
  TIFF with the same resolution tags and a JSON description;
* MRC: ``voxel_size`` in A (x, y and z; 0, MRC's "unknown", where the file states no pixel size), an
  image stack (``ispg`` 0); uint32/int32/float64 frames are stored as float32 (exact for counts below
  2^24);
* NPY: the array, plus a JSON sidecar (the output's name with ``.json`` for ``.npy``) with pixel size,
  units, axes, frame numbers and times.

Each file is written under a hidden temporary name beside the output and renamed only once complete
(``_written``); frames are written one after the other to an ordinary file, never through a memory map.
Why: NPY and MRC were written through a sparse map of the output, so a full disk was a SIGBUS (no
message) that left a full-size file of mostly zeros at the output's name, and a TIFF cut short by a
full disk stayed there too; a rerun was then refused as "exists". Now a full disk is one line naming
the output and the space, and nothing is left at the output's name.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from sbd_stream.formats.hdf5_read import h5_reason
from sbd_stream.formats.limits import MAX_FRAMES, RecordingError, frame_problem, sampling_attrs, trusted_rows
from sbd_stream.formats.recording import (
    KINDS,
    SAMPLING_ATTRS,
    open_recording,
    recording_parts,
    uniform_parts,
)
from sbd_stream.formats.safe_chunks import safe_dataset
from sbd_stream.sinks.disk_space import is_disk_full
from sbd_stream.stop_pending import check_stop

TARGETS = ("tiff", "mrc", "npy", "csv")  # csv: the column table only (--kind columns, export_columns.py)
ALIASES = {"tif": "tiff"}
SUFFIX = {"tiff": ".tif", "mrc": ".mrc", "npy": ".npy", "csv": ".csv"}
SUFFIXES = {"tiff": (".tif", ".tiff"), "mrc": (".mrc", ".mrcs"), "npy": (".npy",), "csv": (".csv",)}
IMAGEJ_DTYPES = (np.uint8, np.uint16, np.float32)
MRC_DTYPES = (np.int8, np.int16, np.uint16, np.float32)


class ExportError(ValueError):
    pass


def target(to: str) -> str:
    """``--to`` as given (any case, ``tif`` for ``tiff``) -> one of TARGETS, else ExportError."""
    t = ALIASES.get(to.strip().lower(), to.strip().lower())
    if t not in TARGETS:
        raise ExportError(f"--to must be one of {', '.join(TARGETS)} (got {to!r})")
    return t


def _rows(f: h5py.File, kind: str, part: Path) -> tuple[Any, np.ndarray, np.ndarray] | None:
    """(frames, seq, time) of ``kind`` in one file, its complete rows only; None when it has none.

    A recording keeps each kind as a group (``frames``, ``seq``, ``time``, ``complete``); a
    ``denoise`` / ``replay --offline`` output keeps ``denoised`` as a dataset, with ``seq`` / ``ts``
    beside it when its input was a recording (else frame i is frame i, with no time). What the file
    declares is checked before anything is read (formats/limits.py): the frame shape, and rows that
    were written (a part whose columns were resized to 10^12 rows made this allocate 7 TiB).
    """
    if kind not in f:
        return None
    g = f[kind]
    fr = g if isinstance(g, h5py.Dataset) else g.get("frames")
    if not isinstance(fr, h5py.Dataset) or fr.ndim != 3:
        return None
    if (problem := frame_problem(tuple(fr.shape[1:]), fr.dtype.itemsize)) is not None:
        raise ExportError(f"{part}: {kind} {problem}")
    if isinstance(g, h5py.Dataset):
        n = min([g.shape[0]] + [int(f[c].shape[0]) for c in ("seq", "ts", "segment") if c in f])
        if g.chunks is not None:  # rows never written have no chunk: declared extents cost nothing
            n = min(n, int(g.id.get_num_chunks()) * int(g.chunks[0]))
        if n > MAX_FRAMES:
            raise ExportError(f"{part}: {kind} declares {n} frames, more than {MAX_FRAMES:.0e}")
        seq = np.asarray(f["seq"][:n]) if "seq" in f else np.arange(n)
        time = np.asarray(f["ts"][:n], dtype=np.float64) if "ts" in f else np.full(n, np.nan)
        if "ts" in f and n:
            time = time - time.min()
        return (g, seq.astype(np.int64), time) if n else None
    try:
        n = trusted_rows(g, f"{part}: {kind}")
    except RecordingError as e:
        raise ExportError(str(e)) from None
    if n == 0:
        return None
    if "time" in g:  # seconds since the segment's first frame
        ts = np.asarray(g["time"][:n], dtype=np.float64)
    else:  # the first layout (no ``time``): the sender's absolute ts, made relative as ``time`` is
        ts = np.asarray(g["ts"][:n], dtype=np.float64)
        ts = ts - ts.min()
    return g["frames"], np.asarray(g["seq"][:n], dtype=np.int64), ts


def _survey(path: Path, kind: str) -> dict[str, Any]:
    """Count, shape, dtype, sampling, and where each frame lies (part, row), in (segment, seq) order.

    No pixels read. Parts from ``path`` on, up to the first of another frame shape or dtype
    (``uniform_parts`` logs where it stopped and the file to export next). A part's ``segment`` (a new
    series_start or producer restart, sinks/record_runs.py) orders before ``seq``: two series of one
    acquisition both count from 0, and sorting by ``seq`` alone interleaved them.
    """
    shape, dtype = None, None
    where: list[tuple[int, int, int, int, float]] = []  # (segment, seq, part, row, time)
    attrs: dict[str, Any] = {}
    try:
        parts = uniform_parts(path, kind)
    except RecordingError as e:
        raise ExportError(str(e)) from None
    for p, part in enumerate(parts):
        with open_recording(part) as f, _damage(part, kind):
            rows = _rows(f, kind, part)
            if rows is None:
                continue
            fr, seq, time = rows
            segment = np.full(len(seq), int(f.attrs.get("segment", 0)), np.int64)
            if isinstance(f[kind], h5py.Dataset) and "segment" in f:  # a denoise / replay --offline output
                segment = np.asarray(f["segment"][: len(seq)], np.int64)
            if shape is None:
                shape, dtype = tuple(fr.shape[1:]), fr.dtype
                attrs = _stated(f, part)
            elif tuple(fr.shape[1:]) != shape or fr.dtype != dtype:
                raise ExportError(  # uniform_parts stops before such a part; kept for a file changed since
                    f"{part.name}: frames of {fr.shape[1:]} {fr.dtype} after {shape} {dtype}; "
                    f"export it on its own (sbd-stream export {part})"
                )
            rows_here = enumerate(zip(segment, seq, time, strict=True))
            where.extend((int(g), int(s), p, i, float(t)) for i, (g, s, t) in rows_here)
    if not where or shape is None:
        raise ExportError(f"{path}: no complete {kind} frames")
    where.sort(key=lambda r: r[:4])  # (segment, seq), stable in (part, row) for a repeated seq
    # float16 (recorded denoised frames) is exported as float32: ImageJ, MRC readers and most tools want it
    dtype = np.dtype(np.float32) if np.dtype(dtype) == np.float16 else np.dtype(dtype)
    return {
        "n": len(where), "shape": shape, "dtype": dtype, "where": [(p, i) for _, _, p, i, _ in where],
        "seq": [s for _, s, *_ in where], "time": [t for *_, t in where], "attrs": attrs,
        "segment": [g for g, *_ in where], "parts": parts,
    }  # fmt: skip


@contextmanager
def _damage(part: Path, kind: str) -> Iterator[None]:
    """h5py's errors reading ``part`` (a checksum, a chunk or a link that fails: a damaged file) as one
    ExportError naming it; an OSError from a read would otherwise be taken for a failed write."""
    try:
        yield
    except (OSError, RuntimeError, KeyError) as e:
        why = h5_reason(e)  # it may already ask "cut short or damaged?": not twice
        raise ExportError(
            f"{part}: cannot read its {kind} frames ({why})" + ("" if "damaged" in why else "; damaged?")
        ) from None


def _stated(f: h5py.File, part: Path) -> dict[str, Any]:
    """``acq`` and the sampling attributes of the first part, the sampling ones by the rule ``denoise``
    applies (``sampling_attrs``: a finite number > 0, a pixel size within its range), else refused: NaN
    made a JSON sidecar no parser reads, a negative or zero size a TIFF traceback or a file claiming it.
    A file stating no ``pixel_size_A`` at all (a Recorder made without sampling) is exported in unit
    ``pixel`` (size 1), as before."""
    stated = {a: f.attrs[a] for a in SAMPLING_ATTRS if a in f.attrs}
    try:
        sampling = sampling_attrs(stated, str(part))
    except ValueError as e:
        raise ExportError(str(e)) from None
    acq = f.attrs.get("acq")
    if acq is None:
        return sampling
    acq = acq.decode(errors="replace") if isinstance(acq, bytes) else acq
    return {"acq": str(acq.item() if isinstance(acq, np.ndarray) and acq.size == 1 else acq), **sampling}


def _frames(parts: list[Path], kind: str, where: list[tuple[int, int]]) -> Iterator[np.ndarray]:
    """The frames at ``where`` (part, row), in that order; every part opened once. Before each frame,
    ``check_stop``: a stop signal whose raise Python swallowed (h5py drops objects all the time) ends
    the export here, as an unswallowed one would have (``cli.app.stop_signals_unwind``)."""
    with ExitStack() as stack:
        files: dict[int, Any] = {}
        for p, i in where:
            check_stop()
            with _damage(parts[p], kind):
                if p not in files:
                    f = stack.enter_context(open_recording(parts[p]))
                    g = f[kind]
                    ds = g if isinstance(g, h5py.Dataset) else g["frames"]
                    files[p] = safe_dataset(ds)  # never through a filter that can crash
                fr = files[p][i]
            yield fr.astype(np.float32) if fr.dtype == np.float16 else fr  # see _survey


def frame_interval(time: list[float], segment: list[int] | None = None) -> float:
    """Median positive step between consecutive frames' times (s) within a segment; 0 when unknown.

    Each segment's time axis starts again at 0, so a step across a segment boundary is no interval.
    """
    t = np.asarray(time, dtype=np.float64)
    g = np.zeros(len(t), np.int64) if segment is None else np.asarray(segment, np.int64)
    ok = np.isfinite(t)
    t, g = t[ok], g[ok]
    d = np.diff(t)[np.diff(g) == 0]
    d = d[d > 0]
    return float(np.median(d)) if d.size else 0.0


def output_path(path: Path, to: str, kind: str, out: Path | None, overwrite: bool) -> Path:
    """Where to write: ``out`` (its ending must fit ``to``) or ``<recording>_<kind>.<ext>``; never over
    the input, and over an existing file only with ``overwrite``."""
    if out is None:
        out = Path(path).with_name(f"{Path(path).stem}_{kind}{SUFFIX[to]}")
    out = Path(out)
    known = {s: t for t, ss in SUFFIXES.items() for s in ss}
    if out.suffix.lower() in known and known[out.suffix.lower()] != to:
        raise ExportError(f"--out {out} ends in {out.suffix} but --to is {to}; name it *{SUFFIX[to]}")
    if out.is_dir():
        raise ExportError(f"--out {out} is a directory; name a file")
    if not out.parent.is_dir():
        raise ExportError(f"--out {out}: folder {out.parent} does not exist")
    if out.exists() and out.resolve() in {p.resolve() for p in recording_parts(path)}:
        raise ExportError(f"--out {out} is the recording itself")
    if out.exists() and not overwrite:
        raise ExportError(f"{out} exists; pass --overwrite to replace it")
    if to == "npy":
        _check_sidecar(path, out, overwrite)
    return out


def sidecar_path(out: Path) -> Path:
    """The NPY's JSON sidecar: the output's name with ``.json`` for its ending."""
    return out.with_suffix(".json")


def _check_sidecar(path: Path, out: Path, overwrite: bool) -> None:
    """The sidecar is a second file the export writes: the output's own rules hold for it. Why: an
    ``--out x.json`` was overwritten by its own sidecar (the frames lost, exit 0), and an existing
    ``x.json`` beside ``--out x.npy`` was replaced without ``--overwrite``."""
    side = sidecar_path(out)
    if side.absolute() == out.absolute():
        raise ExportError(f"--out {out}: its JSON sidecar would be {side}, the same file; name it *.npy")
    if side.is_dir():
        raise ExportError(f"--out {out}: its JSON sidecar {side} is a directory")
    if side.exists() and side.resolve() in {p.resolve() for p in recording_parts(path)}:
        raise ExportError(f"--out {out}: its JSON sidecar {side} is the recording itself")
    if side.exists() and not overwrite:
        raise ExportError(f"{side} exists (the JSON sidecar of --out {out}); pass --overwrite to replace it")


def export(
    path: Path, to: str, kind: str = "denoised", out: Path | None = None, overwrite: bool = False
) -> dict[str, Any]:
    """Write the ``kind`` frames of recording ``path`` as ``to``; returns a summary (paths, count). The
    column table (``--kind columns``) is ``export_columns.export_columns``'s (the CLI picks it)."""
    to = target(to)
    if kind not in KINDS:
        raise ExportError(f"--kind must be one of {', '.join(KINDS)} or columns (the column table, --to csv)")
    if to == "csv":
        raise ExportError("--to csv writes the column table: give --kind columns (frames: tiff, mrc or npy)")
    info = _survey(Path(path), kind)
    out = output_path(Path(path), to, kind, out, overwrite)
    pixel = info["attrs"].get("pixel_size_A")  # checked by _stated; absent: unit pixel
    pixel, unit = (pixel, "angstrom") if pixel is not None else (1.0, "pixel")
    writer = {"tiff": _tiff, "mrc": _mrc, "npy": _npy}[to]
    need = info["n"] * int(np.prod(info["shape"])) * info["dtype"].itemsize  # the frames' bytes, at least
    with _written(out, overwrite, need) as tmp:
        writer(Path(path), kind, tmp, info, pixel, unit)
        check_stop()  # one swallowed during the last frame's write: no output, as for any stop
    if to == "npy":
        with _written(sidecar_path(out), overwrite, 0) as tmp:
            tmp.write_text(json.dumps(_sidecar(Path(path), kind, info, pixel, unit), indent=1, default=str))
    summary = {"output": str(out), "frames": info["n"], "shape": list(info["shape"]), "kind": kind}
    summary |= {"pixel_size": pixel, "unit": unit, "first_seq": info["seq"][0], "last_seq": info["seq"][-1]}
    summary["frame_interval_s"] = frame_interval(info["time"], info["segment"])
    summary["segments"] = len(set(info["segment"]))
    if to == "npy":
        summary["sidecar"] = str(sidecar_path(out))
    return summary


@contextmanager
def _written(out: Path, overwrite: bool, need: int) -> Iterator[Path]:
    """A hidden temporary name beside ``out`` to write to, renamed to ``out`` once the block succeeds and
    removed whatever happens; a write error is one ``ExportError`` naming ``out``.

    Fewer than ``need`` bytes free is refused before anything is written. The output is checked again
    just before the rename: one that appeared meanwhile is replaced only with ``overwrite``."""
    try:
        st = os.statvfs(out.parent)
        free = st.f_bavail * st.f_frsize
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        free = None
    if free is not None and free < need:
        raise ExportError(
            f"{out}: no space left on the device: the export needs {need} bytes, {free} are free in "
            f"{out.parent}; free space or write elsewhere (--out)"
        )
    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
    try:
        yield tmp
        if out.exists() and not overwrite:
            raise ExportError(f"{out} appeared while exporting; pass --overwrite to replace it")
        os.replace(tmp, out)
    except OSError as e:
        raise ExportError(_write_error(out, e)) from None
    finally:
        tmp.unlink(missing_ok=True)


def _write_error(out: Path, e: OSError) -> str:
    """One line for a failed write; a full disk or a file size limit says so (NumPy's short write,
    "65536 requested and 65336 written", under tifffile, has no errno)."""
    why = e.strerror or " ".join(str(e).split())
    if is_disk_full(e) or re.search(r"\d+ requested and \d+ written", str(e)):
        return (
            f"{out}: no space left on the device ({why}); nothing was written: free space or write "
            "elsewhere (--out), and run it again"
        )
    return f"{out}: cannot write it ({why}); nothing was written"


def _tiff(path: Path, kind: str, out: Path, info: dict, pixel: float, unit: str) -> None:
    import tifffile

    n, (h, w), dtype = info["n"], info["shape"], info["dtype"]
    interval = frame_interval(info["time"], info["segment"])
    common = dict(shape=(n, h, w), dtype=dtype, resolution=(1.0 / pixel, 1.0 / pixel))
    frames = _frames(info["parts"], kind, info["where"])
    if dtype.type in IMAGEJ_DTYPES:
        meta: dict[str, Any] = {"axes": "TYX", "unit": unit}
        if interval > 0:
            meta["finterval"] = interval
        tifffile.imwrite(out, frames, imagej=True, metadata=meta, **common)
    else:
        desc = {"axes": "TYX", "unit": unit, "pixel_size": pixel, "finterval": interval}
        tifffile.imwrite(out, frames, resolutionunit="NONE", metadata=desc, **common)


def _mrc(path: Path, kind: str, out: Path, info: dict, pixel: float, unit: str) -> None:
    """The frames one after the other behind a blank header, then the header mrcfile makes for them
    (``new_mmap`` + ``update_header_from_data``, image stack, voxel size, statistics: the bytes
    ``mrcfile.new_mmap`` wrote), its statistics read back from the complete file."""
    from mrcfile import utils
    from mrcfile.dtypes import HEADER_DTYPE
    from mrcfile.mrcinterpreter import MrcInterpreter

    n, (h, w), dtype = info["n"], info["shape"], info["dtype"]
    store = utils.dtype_from_mode(_mrc_mode(dtype if dtype.type in MRC_DTYPES else np.dtype(np.float32)))
    with open(out, "wb") as fh:
        fh.write(bytes(HEADER_DTYPE.itemsize))
        for fr in _frames(info["parts"], kind, info["where"]):
            fh.write(np.ascontiguousarray(fr, dtype=store).data)
    mrc = MrcInterpreter()  # no stream: its header, made in memory (mrcfile's documented use)
    mrc._create_default_attributes()
    data = np.memmap(out, dtype=store, mode="r", offset=HEADER_DTYPE.itemsize, shape=(n, h, w))
    try:
        mrc._set_new_data(data)  # read-only, of a complete file: nothing to fault
        mrc.update_header_from_data()
        mrc.set_image_stack()
        if unit == "angstrom":  # MRC's voxel size is in A: 1 would read back as 1 A (``denoise`` refused
            mrc.voxel_size = pixel  # the file: coarser than any engine); unstated, it stays 0 (unknown)
        mrc.update_header_stats()
        header = mrc.header.tobytes() + mrc.extended_header.tobytes()
    finally:
        mrc._set_new_data(np.empty(0, np.int8))
        del data
    with open(out, "r+b") as fh:
        fh.write(header)


def _mrc_mode(dtype: np.dtype) -> int:
    return {np.int8: 0, np.int16: 1, np.float32: 2, np.uint16: 6}[dtype.type]


def _npy(path: Path, kind: str, out: Path, info: dict, pixel: float, unit: str) -> None:
    """The header ``np.lib.format.open_memmap`` wrote, then the frames one after the other."""
    n, (h, w), dtype = info["n"], info["shape"], info["dtype"]
    fmt = np.lib.format
    header = {"descr": fmt.dtype_to_descr(dtype), "fortran_order": False, "shape": (n, h, w)}
    with open(out, "wb") as fh:
        fmt.write_array_header_1_0(fh, header)
        for fr in _frames(info["parts"], kind, info["where"]):
            fh.write(np.ascontiguousarray(fr, dtype=dtype).data)


def _sidecar(path: Path, kind: str, info: dict, pixel: float, unit: str) -> dict[str, Any]:
    return {
        "source": str(path),
        "kind": kind,
        "axes": ["frame", "y", "x"],
        "pixel_size": pixel,
        "unit": unit,
        "frame_numbers": info["seq"],
        "time_s": [t if np.isfinite(t) else None for t in info["time"]],
        "segment": info["segment"],  # time_s starts again at 0 in each segment
        **{k: v for k, v in info["attrs"].items() if k != "pixel_size_A"},
    }
