"""Offline denoising of files and the environment report behind ``sbd-stream info``."""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sbd_stream.compute.binning import binned_shape
from sbd_stream.config import DenoiseSettings, DetectorSettings, Upsample
from sbd_stream.engines.card import ArtefactError, default_engine_root, load_card, resolve_engine_dir
from sbd_stream.engines.denoiser import Denoiser
from sbd_stream.formats.compression import check_compression
from sbd_stream.frames import Frame, FrameHeader
from sbd_stream.service.batch import BatchStage, dose_warning
from sbd_stream.service.edge import EdgeTally, negative_pixels, replace_invalid, replaced, report_values
from sbd_stream.service.frame_flags import blank_dataset
from sbd_stream.service.offline_dose import (
    dose_verdict,
    measured_vacuum,
    record_verdict,
    vacuum_dataset,
    warn_mismatch,
)
from sbd_stream.service.offline_output import output_held
from sbd_stream.service.offline_plan import overridden, unstated
from sbd_stream.service.offline_results import JobInterrupted, StopFlag
from sbd_stream.service.offline_terminal import progress as progress_bar
from sbd_stream.service.offline_terminal import say
from sbd_stream.sinks.disk_space import check_space, is_disk_full
from sbd_stream.sources.stacks import StackError, atomic_h5, create_output, open_stack

MIN_FREE_BYTES = 16 * 1024**2
"""Free space below which ``denoise --scheduler none`` stops before its next batch (sinks/disk_space.py)."""


def denoise_file(
    input: str | Path,
    output: str | Path,
    dataset: str | None = None,
    settings: DenoiseSettings | None = None,
    detector: dict[str, float | None] | None = None,
    progress: bool = False,
    overwrite: bool = True,
    compression: str | None = None,
) -> dict[str, Any]:
    """Denoise every frame of ``input`` into ``output``; returns a summary of what was done.

    One job per output: its lock (``formats/output_lock.py``, ``OutputBusy``) is held throughout,
    taken before anything is written. ``overwrite=False`` refuses an ``output`` that exists, under the
    lock and again before the rename. Nothing is left behind unless the job finishes: an error, a full
    disk (one ``StackError`` line) or SIGINT / SIGTERM / SIGHUP (between batches: ``JobInterrupted``,
    exit status 128 + the signal) discards the temporary file; this path cannot resume. Only the
    output's own writes can be "no space left": the progress bar and the last line go to stderr
    through ``offline_terminal`` (a stderr on a full disk deleted a finished output), and the output's
    name leaves room for the hidden ``.OUT.partial`` (``offline_output.output_held``).

    ``settings``: the same ``[denoise]`` settings as the live service (engine, model, device, tiles,
    ``batch_frames``, ``bin_tolerance``); offline an ``auto`` upsampling is bicubic (quality first).

    ``compression``: the output's (``formats/compression.py``; None: bitshuffle-lz4, which readers need
    hdf5plugin for; gzip and none are read by any HDF5 reader), checked before anything is done.

    ``detector`` (pixel_size_A, dose_e_per_A2 or counts_per_px; None values ignored) overrides what
    the input's attributes say; the paper's K2 sampling fills anything neither gives. Frames go
    through the same batch stage as the live service: binned to the engine's working pixel, denoised,
    and returned at the detector's sampling in counts per detector pixel. Arrays in memory, not files:
    ``service/frames.py`` (``denoise_frames``).
    """
    input, output = Path(input), Path(output)  # str paths too (a notebook's "in.npy")
    compression = check_compression(compression)  # a typo refused before any work: one ValueError line
    if output.suffix.lower() not in {".h5", ".hdf5"}:
        raise StackError(f"{output}: output must be an HDF5 file (.h5 or .hdf5)")
    # one job per output (another one's temporary file is never touched); signals stop between batches
    with output_held(output, f".{output.name}.partial") as held, StopFlag().installed() as stop:
        if not overwrite and output.exists():
            raise FileExistsError(f"{output} exists; pass --overwrite to replace it")
        job = (progress, overwrite, held is not None, stop, compression)
        try:
            return _denoise_file(input, output, dataset, settings, detector, *job)
        except _Interrupted as e:  # said once the progress bar has stopped and the file is gone
            say(str(e))
            raise


def _denoise_file(
    input: Path, output: Path, dataset: str | None, settings: DenoiseSettings | None,
    detector: dict[str, float | None] | None, progress: bool, overwrite: bool, locked: bool, stop: StopFlag,
    compression: str,
) -> dict[str, Any]:  # fmt: skip
    stack = open_stack(input, dataset)
    try:
        given = {k: v for k, v in (detector or {}).items() if v is not None}
        sampling = dict(stack.sampling)
        if (note := overridden(sampling, given)) is not None:
            log.warning("%s", note)
        if "dose_e_per_A2" in given or "counts_per_px" in given:
            sampling.pop("dose_e_per_A2", None)
            sampling.pop("counts_per_px", None)
        if (note := unstated(sampling, given)) is not None:
            log.warning("%s", note)
        det = DetectorSettings(**{**sampling, **given})
        d = settings or DenoiseSettings()
        try:
            den = Denoiser.load(d.engine, d.model, d.device, tile=d.tile, margin=d.margin)
        except ArtefactError as e:
            raise StackError(f"engine: {e}") from e
        stage = BatchStage(
            den, det, bin_tolerance=d.bin_tolerance, upsample=offline_upsample(d), orientations=d.orientations
        )
        g = stage.geometry
        n, h, w = stack.shape
        hb, wb = binned_shape(h, w, g.bin)
        attrs = {
            "engine_id": den.engine_id,
            "engine_card": den.card,
            "source": stack.source,
            "source_dtype": str(stack.dtype),
            **g.describe(),
            "tiling": {k: getattr(den.plan(hb, wb), k) for k in ("tile", "margin", "overlap")},
            "orientations": stage.orientations,
            "upsample": stage.upsample,  # what ran (``auto`` resolved): a live recording's may differ
            "sbd_stream_version": _version(),
            "dose_range": list(g.dose_range),
            "dose_in_range": bool(g.dose_in_range),
        }
        t0 = time.perf_counter()
        negative = done = 0
        tally = EdgeTally(det.vacuum_counts)  # the hot-pixel rule's dose: the one the engine is told
        # the bar outside the output's file: only the output's own writes can be "the disk is full"
        with progress_bar(n, show=progress) as bar:
            try:
                with atomic_h5(output, locked, overwrite) as f:
                    out = create_output(f, (n, h, w), attrs, compression=compression)
                    blank_ds, vac_ds = blank_dataset(f, n), vacuum_dataset(f, n)
                    for frames in stack.batches(d.batch_frames):
                        if stop:
                            break
                        # HDF5 reports a full disk late, if at all: look before each batch (as the recorder)
                        check_space(output.parent, MIN_FREE_BYTES, len(frames) * h * w * 4)
                        headers = [
                            FrameHeader(stack.source, done + i, 0.0, (h, w), str(frames.dtype))
                            for i in range(len(frames))
                        ]
                        frs = [
                            replace_invalid(Frame(hd, fr), counts_per_px=det.vacuum_counts)
                            for hd, fr in zip(headers, frames, strict=True)
                        ]
                        f["replaced_pixels"][done : done + len(frames)] = [replaced(fr) for fr in frs]
                        for fr in frs:
                            tally.add(fr.header.seq, fr.header.meta)
                        negative += negative_pixels(frames)
                        res = stage.process(frs)
                        out[done : done + len(frames)] = res.denoised
                        blank = res.blank if res.blank is not None else np.zeros(len(frs), bool)
                        blank_ds[done : done + len(frames)] = blank
                        raw = np.stack([np.asarray(fr.data) for fr in frs])  # as denoised: replaced pixels
                        vac_ds[done : done + len(frames)] = measured_vacuum(g, raw, res.denoised, blank)
                        done += len(frames)
                        if bar is not None:
                            bar[0].update(bar[1], advance=len(frames))
                    if stop and done < n:  # the temporary file goes with the exception: no resume here
                        raise _Interrupted(output, stop.signum or signal.SIGINT, done, n)
                    per_frame, blank = np.asarray(f["replaced_pixels"][:]), np.asarray(blank_ds[:])
                    levels = np.asarray(vac_ds[:])
                    record_verdict(f, verdict := dose_verdict(levels, det))  # the stated dose vs the data
            except (OSError, RuntimeError) as e:
                if not is_disk_full(e):
                    raise
                raise StackError(_no_space(output, e, done, n)) from None
        dt = time.perf_counter() - t0
        if not g.dose_in_range:
            log.warning("%s", dose_warning(g.detector.dose_per_area, g.dose_factor, g.dose_range))
        warn_mismatch(verdict, levels, det)
        report_values(per_frame, negative, output, tally)
    finally:
        stack.close()
    return {
        "input": stack.source,
        "output": str(output),
        "frames": n,
        "shape": [h, w],
        "engine_id": den.engine_id,
        **g.describe(),
        "dose_range": list(g.dose_range),
        "dose_in_range": bool(g.dose_in_range),
        "seconds": round(dt, 3),
        "frames_per_s": round(n / dt, 3),
        "replaced_pixels": int(per_frame.sum()),
        "frames_with_replaced": int(np.count_nonzero(per_frame)),
        "negative_pixels": negative,
        "blank_frames": int(blank.sum()),
        **verdict,
    }


log = logging.getLogger(__name__)


class _Interrupted(JobInterrupted):
    """``JobInterrupted`` (exit status 128 + the signal's number) of a job that kept nothing."""

    def __init__(self, output: Path, signum: int, done: int, total: int) -> None:
        super().__init__(signum, done, total)
        self.output = output

    def __str__(self) -> str:
        return (
            f"{self.output}: interrupted after frame {self.done} of {self.total}; nothing was kept "
            "(--scheduler none cannot resume): run the command again"
        )


def _no_space(output: Path, e: BaseException, done: int, total: int) -> str:
    """One line for a full disk (or a file size limit): HDF5's own text runs over several lines and
    never says so."""
    text, code = " ".join(str(e).split()), getattr(e, "errno", None)
    if (m := re.search(r"error message = '([^']*)'", text)) is not None:
        why = m.group(1)  # HDF5's: "File too large", "No space left on device"
    elif isinstance(e, OSError) and e.strerror:
        why = e.strerror  # check_space's: how much is free, how much is needed
    else:
        why = os.strerror(code) if code else text[:120]
    return (
        f"{output}: no space left on the device ({why}) after {done} of {total} frames; nothing was "
        f"kept: free space in {output.parent.resolve()} (or write elsewhere) and run the command again"
    )


def offline_upsample(d: DenoiseSettings) -> Upsample:
    """Offline, quality comes first: ``auto`` is bicubic whatever the device (live on a CPU: bilinear)."""
    return Upsample.bicubic if d.upsample is Upsample.auto else d.upsample


def _version() -> str:
    from sbd_stream import __version__

    return __version__


def describe_engine(engine_dir: Path) -> dict[str, Any]:
    """What ``info`` says about one engine: sampling, field of view, files, backends usable here."""
    from sbd_stream.engines import available_kinds

    try:
        card = load_card(engine_dir)
    except ArtefactError as e:
        return {"path": str(engine_dir), "error": str(e)}
    return {
        "name": card.name,
        "path": str(engine_dir),
        "architecture": str(card.architecture),
        "scales": card.scales,
        "channels": card.channels,
        "field_of_view": card.field_of_view,
        "working_pixel_A": card.pixel_size_A,
        "field_of_view_A": card.field_of_view * card.pixel_size_A if card.pixel_size_A else None,
        "dose_e_per_A2": card.dose_e_per_A2,
        "dose_range": list(card.dose_range),
        "files": sorted(card.checksums),
        # checksums verified (the shipped engines' 18 MB: ~10 ms): a damaged file is why a backend cannot run
        "backends": available_kinds(engine_dir, card, verify=True),
    }


def environment_info(model: str | None = None) -> dict[str, Any]:
    """Engines (``model``: that one alone, a name or a path; raises ArtefactError if there is none),
    backends, devices and versions."""
    root = default_engine_root()
    if model is not None:
        engines = [describe_engine(resolve_engine_dir(model))]
    else:
        # regular files only: a folder named card.json raised IsADirectoryError, a FIFO hung `info`
        # and no hidden folder: install-quality's .NAME.installing (a killed copy) is not an engine
        cards = [c for c in sorted(root.glob("*/card.json")) if c.is_file() and c.parent.name[0] != "."]
        engines = [describe_engine(c.parent) for c in cards]
    versions: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("onnxruntime", "onnx", "tensorrt", "h5py", "zmq", "numpy"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:
            versions[mod] = None
    devices: dict[str, Any] = {"cpu": platform.processor() or platform.machine(), "cuda": []}
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            devices["cuda"].append({"index": i, "name": p.name, "cc": f"{p.major}.{p.minor}"})
    try:
        import onnxruntime as ort

        devices["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        devices["onnxruntime_providers"] = []
    info = {"engine_root": str(root), "engines": engines, "devices": devices, "versions": versions}
    return json.loads(json.dumps(info, default=str))
