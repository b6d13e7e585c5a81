"""Offline denoising of files and the environment report behind ``sbd-stream info``."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sbd_stream.card import ArtefactError, default_engine_root, load_card
from sbd_stream.denoiser import Denoiser
from sbd_stream.stacks import StackError, atomic_h5, create_output, open_stack


def denoise_file(
    input: Path,
    output: Path,
    dataset: str | None = None,
    engine: str = "auto",
    model: str | None = None,
    device: str | None = None,
    dose: float | None = None,
    batch: int = 2,
    tile: int | None = None,
    margin: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Denoise every frame of ``input`` into ``output``; returns a summary of what was done."""
    if output.suffix.lower() not in {".h5", ".hdf5"}:
        raise StackError(f"{output}: output must be an HDF5 file (.h5 or .hdf5)")
    stack = open_stack(input, dataset)
    try:
        try:
            den = Denoiser.load(engine, model, device, tile=tile, margin=margin, dose=dose)
        except ArtefactError as e:
            raise StackError(f"engine: {e}") from e
        n, h, w = stack.shape
        attrs = {
            "engine_id": den.engine_id,
            "engine_card": den.card,
            "source": stack.source,
            "source_dtype": str(stack.dtype),
            "dose_counts_per_px": den.dose,
            "tiling": {"tile": den.plan(h, w).tile, "margin": den.margin, "overlap": den.overlap},
            "sbd_stream_version": _version(),
        }
        t0 = time.perf_counter()
        with atomic_h5(output) as f:
            out = create_output(f, (n, h, w), attrs)
            done = 0
            bar = _progress(n) if progress else None
            for frames in stack.batches(batch):
                result = den.denoise(torch.from_numpy(np.ascontiguousarray(frames)))
                out[done : done + len(frames)] = result.cpu().numpy()
                done += len(frames)
                if bar is not None:
                    bar[0].update(bar[1], advance=len(frames))
            if bar is not None:
                bar[0].stop()
        dt = time.perf_counter() - t0
    finally:
        stack.close()
    return {
        "input": stack.source,
        "output": str(output),
        "frames": n,
        "shape": [h, w],
        "engine_id": den.engine_id,
        "seconds": round(dt, 3),
        "frames_per_s": round(n / dt, 3),
    }


def _progress(total: int) -> tuple[Any, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    p = Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()
    )
    p.start()
    return p, p.add_task("denoising", total=total)


def _version() -> str:
    from sbd_stream import __version__

    return __version__


def environment_info(model: str | None = None) -> dict[str, Any]:
    from sbd_stream.engines import available_kinds

    root = default_engine_root()
    engines = []
    for card_path in sorted(root.glob("*/card.json")):
        try:
            card = load_card(card_path.parent)
            engines.append(
                {
                    "name": card.name,
                    "path": str(card_path.parent),
                    "architecture": str(card.architecture),
                    "scales": card.scales,
                    "channels": card.channels,
                    "field_of_view": card.field_of_view,
                    "files": sorted(card.checksums),
                    "backends": available_kinds(card_path.parent),
                }
            )
        except ArtefactError as e:
            engines.append({"path": str(card_path.parent), "error": str(e)})
    versions = {"python": platform.python_version(), "torch": torch.__version__}
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
