"""`sbd-stream export`: a recording's frames as TIFF, MRC or NPY, with the pixel size where each keeps it.

For tools that read neither NeXus nor HDF5. The frames of one kind (raw, denoised, llr) across the
rolled parts of an acquisition, in recorded order, streamed (never all in memory). Calibration:

* TIFF: ImageJ hyperstack (``axes`` TYX) whose X/Y resolution tags are pixels per ``unit`` =
  ``angstrom`` and ``finterval`` the mean frame interval (s); dtypes ImageJ cannot hold (uint32, ...)
  are written as a plain TIFF with the same resolution tags and a JSON description;
* MRC: ``voxel_size`` in A (x, y and z), an image stack (``ispg`` 0); uint32/int32/float64 frames
  are stored as float32 (exact for counts below 2^24);
* NPY: the array, plus ``<out>.json`` with pixel size, units, axes, frame numbers and times.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from sbd_stream.formats.recording import KINDS, open_recording, recording_parts

TARGETS = ("tiff", "mrc", "npy")
SUFFIX = {"tiff": ".tif", "mrc": ".mrc", "npy": ".npy"}
IMAGEJ_DTYPES = (np.uint8, np.uint16, np.float32)
MRC_DTYPES = (np.int8, np.int16, np.uint16, np.float32)


class ExportError(ValueError):
    pass


def _survey(path: Path, kind: str) -> dict[str, Any]:
    """Frame count, shape, dtype, frame numbers, times and sampling across the parts, without pixels."""
    n, shape, dtype = 0, None, None
    seq: list[int] = []
    time: list[float] = []
    attrs: dict[str, Any] = {}
    for part in recording_parts(path):
        with open_recording(part) as f:
            if kind not in f:
                continue
            g = f[kind]
            k = len(g["complete"])
            if k == 0:
                continue
            fr = g["frames"]
            if shape is None:
                shape, dtype = tuple(fr.shape[1:]), fr.dtype
                names = ("acq", "pixel_size_A", "dose_e_per_A2", "counts_per_px")
                attrs = {a: f.attrs[a] for a in names if a in f.attrs}
                attrs = {a: (v.item() if hasattr(v, "item") else v) for a, v in attrs.items()}
            elif tuple(fr.shape[1:]) != shape or fr.dtype != dtype:
                raise ExportError(
                    f"{part.name}: frames of {fr.shape[1:]} {fr.dtype} after {shape} {dtype}; "
                    "export that part on its own"
                )
            n += k
            seq.extend(int(v) for v in g["seq"][:k])
            ts = g["time"][:k] if "time" in g else g["ts"][:k]
            time.extend(float(v) for v in ts)
    if n == 0 or shape is None:
        raise ExportError(f"{path}: no complete {kind} frames")
    # float16 (recorded denoised frames) is exported as float32: ImageJ, MRC readers and most tools want it
    dtype = np.dtype(np.float32) if np.dtype(dtype) == np.float16 else np.dtype(dtype)
    return {"n": n, "shape": shape, "dtype": dtype, "seq": seq, "time": time, "attrs": attrs}


def _frames(path: Path, kind: str) -> Iterator[np.ndarray]:
    for part in recording_parts(path):
        with open_recording(part) as f:
            if kind not in f:
                continue
            g = f[kind]
            for i in range(len(g["complete"])):
                fr = g["frames"][i]
                yield fr.astype(np.float32) if fr.dtype == np.float16 else fr  # see _survey


def export(path: Path, to: str, kind: str = "denoised", out: Path | None = None) -> dict[str, Any]:
    """Write the ``kind`` frames of recording ``path`` as ``to``; returns a summary (paths, count)."""
    if to not in TARGETS:
        raise ExportError(f"--to must be one of {', '.join(TARGETS)}")
    if kind not in KINDS:
        raise ExportError(f"--kind must be one of {', '.join(KINDS)}")
    info = _survey(Path(path), kind)
    out = Path(out) if out is not None else Path(path).with_name(f"{Path(path).stem}_{kind}{SUFFIX[to]}")
    pixel = float(info["attrs"].get("pixel_size_A") or 1.0)
    unit = "angstrom" if info["attrs"].get("pixel_size_A") else "pixel"
    {"tiff": _tiff, "mrc": _mrc, "npy": _npy}[to](Path(path), kind, out, info, pixel, unit)
    summary = {"output": str(out), "frames": info["n"], "shape": list(info["shape"]), "kind": kind}
    summary |= {"pixel_size": pixel, "unit": unit}
    if to == "npy":
        summary["sidecar"] = str(out.with_suffix(".json"))
    return summary


def _tiff(path: Path, kind: str, out: Path, info: dict, pixel: float, unit: str) -> None:
    import tifffile

    n, (h, w), dtype = info["n"], info["shape"], info["dtype"]
    t = np.asarray(info["time"])
    interval = float(np.mean(np.diff(t))) if n > 1 else 0.0
    common = dict(shape=(n, h, w), dtype=dtype, resolution=(1.0 / pixel, 1.0 / pixel))
    if dtype.type in IMAGEJ_DTYPES:
        meta: dict[str, Any] = {"axes": "TYX", "unit": unit}
        if interval > 0:
            meta["finterval"] = interval
        tifffile.imwrite(out, _frames(path, kind), imagej=True, metadata=meta, **common)  # type: ignore[arg-type]
    else:
        desc = {"axes": "TYX", "unit": unit, "pixel_size": pixel, "finterval": interval}
        tifffile.imwrite(out, _frames(path, kind), resolutionunit="NONE", metadata=desc, **common)  # type: ignore[arg-type]


def _mrc(path: Path, kind: str, out: Path, info: dict, pixel: float, unit: str) -> None:
    import mrcfile

    n, (h, w), dtype = info["n"], info["shape"], info["dtype"]
    store = dtype if dtype.type in MRC_DTYPES else np.dtype(np.float32)
    with mrcfile.new_mmap(out, shape=(n, h, w), mrc_mode=_mrc_mode(store), overwrite=True) as mrc:
        for i, fr in enumerate(_frames(path, kind)):
            mrc.data[i] = fr
        mrc.set_image_stack()
        mrc.voxel_size = pixel
        mrc.update_header_stats()


def _mrc_mode(dtype: np.dtype) -> int:
    return {np.int8: 0, np.int16: 1, np.float32: 2, np.uint16: 6}[dtype.type]


def _npy(path: Path, kind: str, out: Path, info: dict, pixel: float, unit: str) -> None:
    n, (h, w), dtype = info["n"], info["shape"], info["dtype"]
    arr = np.lib.format.open_memmap(out, mode="w+", dtype=dtype, shape=(n, h, w))
    for i, fr in enumerate(_frames(path, kind)):
        arr[i] = fr
    arr.flush()
    del arr
    side = {
        "source": str(path),
        "kind": kind,
        "axes": ["frame", "y", "x"],
        "pixel_size": pixel,
        "unit": unit,
        "frame_numbers": info["seq"],
        "time_s": info["time"],
        **{k: v for k, v in info["attrs"].items() if k != "pixel_size_A"},
    }
    out.with_suffix(".json").write_text(json.dumps(side, indent=1, default=str))
