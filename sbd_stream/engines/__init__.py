"""Engine registry: choose a backend by name, or ``auto`` for the fastest one that runs here.

``auto`` prefers TensorRT (GPU + plan buildable), then ONNX Runtime, then eager PyTorch, and says why
it skipped each, so a user on a GPU box who gets the CPU path learns the reason from the log. On a GPU
box whose ONNX Runtime has no CUDA provider (the plain ``onnxruntime`` wheel), PyTorch on the GPU comes
before ONNX Runtime on the CPU: a GPU without TensorRT should still denoise on the GPU.

Every engine runs one warm-up tile before it is handed out (``base.warm_up``), so one that cannot run or
returns NaN is refused at load. Under ``auto`` such a backend is passed over with a warning; a file that
fails its checksum (``IntegrityError``) is not: it is reported, never silently replaced by another file.
"""

from __future__ import annotations

import logging
from enum import StrEnum
from pathlib import Path

import torch

from sbd_stream.engines.base import Engine, EngineUnavailable, warm_up
from sbd_stream.engines.card import (
    ONNX_FILE,
    WEIGHTS_FILE,
    ArtefactError,
    EngineCard,
    IntegrityError,
    file_problem,
    load_card,
    resolve_engine_dir,
)

log = logging.getLogger(__name__)

__all__ = ["Engine", "EngineKind", "EngineUnavailable", "auto_order", "available_kinds", "load_engine"]


class EngineKind(StrEnum):
    auto = "auto"
    tensorrt = "tensorrt"
    onnxruntime = "onnxruntime"
    torch = "torch"


def available_kinds(
    engine_dir: Path | None = None, card: EngineCard | None = None, verify: bool = False
) -> dict[str, str | None]:
    """Each backend -> None when usable here, else the reason it isn't.

    With ``card``, each backend's file must also be listed by it, and with ``verify`` match its checksum
    (``info``: a damaged ``model.onnx`` was reported usable); ``auto`` leaves the hashing to the load,
    which refuses a mismatch."""
    from sbd_stream.engines.onnxruntime_engine import available_providers
    from sbd_stream.engines.tensorrt_engine import tensorrt_unavailable_reason

    def problem(filename: str) -> str | None:
        if engine_dir is None:
            return None
        if card is None:
            return None if (engine_dir / filename).is_file() else f"no {filename} in the engine"
        return file_problem(engine_dir, card, filename, verify)

    onnx = problem(ONNX_FILE)
    out: dict[str, str | None] = {"torch": problem(WEIGHTS_FILE)}
    out["onnxruntime"] = onnx if available_providers() else "onnxruntime is not installed"
    out["tensorrt"] = tensorrt_unavailable_reason() or onnx
    return out


def auto_order(cuda: bool, ort_cuda: bool) -> list[EngineKind]:
    """The backends ``auto`` tries, in order, given a CUDA GPU and a CUDA-capable ONNX Runtime."""
    if cuda and not ort_cuda:
        return [EngineKind.tensorrt, EngineKind.torch, EngineKind.onnxruntime]
    return [EngineKind.tensorrt, EngineKind.onnxruntime, EngineKind.torch]


def load_engine(
    kind: EngineKind | str = EngineKind.auto,
    engine: str | Path | None = None,
    device: str | None = None,
    batch: int = 16,
    precision: str = "fp16",
    tile: int | None = None,
    threads: int | None = None,
) -> Engine:
    """Open the engine directory ``engine`` (name or path) with backend ``kind``.

    ``threads``: intra-op CPU threads of this engine (ONNX Runtime sessions own theirs; torch's pool
    is per process, so for the torch backend it is a process-wide setting), for engine workers that
    split a CPU's cores between them.
    """
    if not isinstance(kind, EngineKind) and str(kind) not in {k.value for k in EngineKind}:
        raise ValueError(
            f"{kind!r} is not a backend ({', '.join(k.value for k in EngineKind)}); an engine's name or "
            "folder goes second, e.g. Denoiser.load('auto', 'sbd-unet4-paper-twins')"
        )
    if precision not in ("fp16", "fp32"):
        raise ValueError(
            f"precision must be 'fp16' or 'fp32' (TensorRT; the CPU backends run fp32), got {precision!r}"
        )
    engine_dir = resolve_engine_dir(engine)
    card = load_card(engine_dir)
    kind = EngineKind(kind)
    if kind is EngineKind.auto:
        reasons = available_kinds(engine_dir)
        cuda_here = torch.cuda.is_available() and not (device or "").startswith("cpu")
        why: list[str] = []
        for k in auto_order(cuda_here, cuda_here and _ort_has_cuda()):
            if reasons[k.value] is None:
                try:
                    return load_engine(k, engine_dir, device, batch, precision, tile, threads)
                except IntegrityError:
                    raise  # a damaged or tampered file is reported, not replaced by another one
                except (EngineUnavailable, ArtefactError, RuntimeError) as e:
                    log.warning("engine %s unavailable, trying the next: %s", k.value, e)
                    why.append(f"{k.value}: {e}")
            else:
                log.info("engine %s skipped: %s", k.value, reasons[k.value])
                why.append(f"{k.value}: {reasons[k.value]}")
        raise EngineUnavailable(f"no engine backend can run {engine_dir} ({'; '.join(why)})")
    loaded = _open(kind, engine_dir, card, device, batch, precision, tile, threads)
    seconds = warm_up(loaded)
    log.debug("engine %s warmed up in %.1f ms", loaded.engine_id, seconds * 1e3)
    return loaded


def _open(
    kind: EngineKind,
    engine_dir: Path,
    card: EngineCard,
    device: str | None,
    batch: int,
    precision: str,
    tile: int | None,
    threads: int | None,
) -> Engine:
    """The backend ``kind`` of the engine, loaded (not yet warmed up)."""
    cuda = torch.cuda.is_available()
    if kind is EngineKind.tensorrt:
        from sbd_stream.engines.tensorrt_engine import TensorRTEngine

        return TensorRTEngine(engine_dir, card, device or "cuda", batch, precision, tile)
    if kind is EngineKind.onnxruntime:
        from sbd_stream.engines.onnxruntime_engine import OnnxRuntimeEngine

        dev = device or ("cuda" if cuda and _ort_has_cuda() else "cpu")
        return OnnxRuntimeEngine(engine_dir, card, dev, batch, threads=threads)
    from sbd_stream.engines.torch_engine import TorchEngine

    if threads and (device or ("cuda" if cuda else "cpu")).startswith("cpu"):
        torch.set_num_threads(threads)
    return TorchEngine(engine_dir, card, device or ("cuda" if cuda else "cpu"), batch)


def _ort_has_cuda() -> bool:
    from sbd_stream.engines.onnxruntime_engine import available_providers

    return "CUDAExecutionProvider" in available_providers()
